"""The row path of the encoder (`Encoder.encode_records`, no pandas) is the pandas path exactly.

The scoring API encodes with `encode_records`; nodes train on `Encoder.encode` over frames. Both
must give the same x (bit for bit), kept rows, row errors and counts for every value either can
meet: missing values of every kind (None, NaN, pd.NA, blank and whitespace-only text), numbers as
JSON numbers, numpy scalars and text (padded, signed, exponents, 'inf'/'nan' spellings, junk),
huge integers, booleans, unknown categories, binary spellings — over generated contracts with
every numeric transform (log1p, agreed center/scale, min-max), missing policy and strictness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from common.contract import Contract, ContractError, NumericFeature, parse_contract
from common.encoding import Encoded, Encoder, cell_number, cell_text, scale_numeric
from common.encoding import rows as row_path

VOCAB = ["basic", "pro", "Two year", "1", "0"]
TRUE = ["yes", "1", "True"]
FALSE = ["no", "0", "False"]


def _contract(features: list[dict[str, Any]]) -> Contract:
    return parse_contract(
        {
            "name": "prop",
            "version": 1,
            "task": "churn",
            "label": {"column": "y", "positive": "1"},
            "id": "cid",
            "features": features,
        }
    )


@st.composite
def numeric_features(draw: st.DrawFn, name: str) -> dict[str, Any]:
    lo = draw(st.sampled_from([-0.5, 0.0, 1.0, 18.0, -1000.0]))
    hi = lo + draw(st.sampled_from([1.0, 50.5, 1000.0, 1e6]))
    feature: dict[str, Any] = {"name": name, "type": "numeric", "min": lo, "max": hi}
    if draw(st.booleans()):
        feature["transform"] = "log1p"
    if draw(st.booleans()):
        feature["center"] = draw(st.floats(-5, 5))
        feature["scale"] = draw(st.floats(0.05, 50))
    if draw(st.booleans()):
        feature["missing"] = "impute"
        feature["impute"] = draw(st.floats(lo, hi))
    return feature


@st.composite
def contracts(draw: st.DrawFn) -> tuple[Contract, bool]:
    features: list[dict[str, Any]] = [draw(numeric_features(f"n{i}")) for i in range(2)]
    features.append(
        {
            "name": "c0",
            "type": "categorical",
            "vocabulary": draw(st.lists(st.sampled_from(VOCAB), min_size=1, unique=True)),
            "missing": draw(st.sampled_from(["other", "reject"])),
        }
    )
    binary: dict[str, Any] = {"name": "b0", "type": "binary"}
    if draw(st.booleans()):
        binary |= {"true_values": TRUE[:2], "false_values": FALSE[:2]}
    policy = draw(st.sampled_from(["reject", "impute-true", "impute-false"]))
    if policy != "reject":
        binary |= {"missing": "impute", "impute": policy == "impute-true"}
    features.append(binary)
    try:
        contract = _contract(features)
    except ContractError:
        assume(False)
        raise
    return contract, draw(st.booleans())


NUMBER_TEXT = st.text(alphabet=" \t\n+-.eE0123456789", max_size=12)
SPELLINGS = st.sampled_from(["inf", "-Infinity", "+INF", "nan", "NaN", "-nan", "1e400", "-0"])


def _pad(s: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    ws = st.sampled_from(["", " ", "  ", "\t", "\n", "\u00a0", "\u2003", "\x1c"])
    return st.tuples(ws, s, ws).map(lambda t: t[0] + t[1] + t[2])


CELLS = st.one_of(
    st.none(),
    st.just(math.nan),
    st.just(pd.NA),
    st.sampled_from(["", " ", "\t\n", "\u00a0"]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2000, 2000),
    st.integers(-(2**70), 2**70),
    st.integers(-1000, 1000),
    st.booleans(),
    _pad(NUMBER_TEXT),
    _pad(SPELLINGS),
    _pad(st.sampled_from(VOCAB + TRUE + FALSE + ["gold", "YES", "maybe"])),
    st.text(max_size=6),
    st.builds(np.float64, st.floats(-100, 100)),
    st.builds(np.float32, st.floats(-100, 100, width=32)),
    st.builds(np.int64, st.integers(-100, 100)),
    st.just(np.float64("nan")),
    st.just(b"12"),
)


def records(contract: Contract) -> st.SearchStrategy[list[dict[str, Any]]]:
    names = [*contract.feature_names, "cid", "extra"]
    row = st.dictionaries(st.sampled_from(names), CELLS, max_size=len(names))
    return st.lists(row, min_size=1, max_size=20)  # both sides of encoding.SMALL_BATCH


def reference(encoder: Encoder, rows: Sequence[Mapping[str, Any]]) -> Encoded:
    """What the nodes and the API computed so far: `encode` on an object frame."""
    names = encoder.contract.feature_names
    frame = pd.DataFrame({n: [r.get(n) for r in rows] for n in names}, dtype=object)
    return encoder.encode(frame)


def assert_same(a: Encoded, b: Encoded) -> None:
    assert a.x.dtype == b.x.dtype == np.float32
    assert a.x.shape == b.x.shape
    assert a.x.tobytes() == b.x.tobytes()  # bit for bit (-0.0 and all)
    assert a.keep.tolist() == b.keep.tolist()
    assert a.row_errors == b.row_errors
    assert a.stats == b.stats


def _outcome(encode: Any) -> Any:
    try:
        return encode()
    except (OverflowError, ValueError, TypeError) as exc:  # e.g. an int beyond float
        return type(exc)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_row_path_equals_the_pandas_path_on_generated_records(data: st.DataObject) -> None:
    """Both row paths — cell by cell in Python (a few rows) and numpy per kind of feature (more
    rows) — on the same records, against the pandas path."""
    contract, strict = data.draw(contracts())
    encoder = Encoder(contract, strict_categories=strict)
    rows = data.draw(records(contract))
    n = len(rows)
    columns = {f: [r.get(f) for r in rows] for f in contract.feature_names}
    ref = _outcome(lambda: reference(encoder, rows))
    for fast in (
        _outcome(lambda: encoder.encode_records(rows)),
        _outcome(lambda: row_path._encode_small(encoder, columns, n)),
        _outcome(lambda: row_path._encode_vectorised(encoder, columns, n)),
    ):
        if isinstance(ref, type) or isinstance(fast, type):
            assert ref == fast  # the same error, never an encoding on one side only
        else:
            assert_same(ref, fast)


@settings(max_examples=300, deadline=None)
@given(value=CELLS)
def test_one_cell_reads_like_pandas(value: object) -> None:
    col = pd.Series([value], dtype=object)
    text = col.astype("string").str.strip()
    missing = bool((col.isna() | text.isna() | (text == "")).iloc[0])
    assert (cell_text(value) is None) == missing
    if not missing:
        assert cell_text(value) == text.iloc[0]
        try:
            expected = float(pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)[0])
        except OverflowError:
            with pytest.raises(OverflowError):
                cell_number(value)
            return
        got = cell_number(value)
        assert (math.isnan(got) and math.isnan(expected)) or got == expected


@settings(max_examples=300, deadline=None)
@given(
    feature=numeric_features("x"),
    value=st.floats(-1e7, 1e7) | st.integers(-(10**7), 10**7),
)
def test_numbers_match_the_contracts_own_encoding(feature: dict[str, Any], value: float) -> None:
    """Transforms included: the row path equals `NumericFeature.encode_value` (in float32)."""
    try:
        contract = _contract([feature])
    except ContractError:
        assume(False)
        return
    f = contract.features[0]
    assert isinstance(f, NumericFeature)
    encoder = Encoder(contract)
    out = encoder.encode_records([{"x": value}])
    assert out.x[0, 0] == np.float32(f.encode_value(float(value)))
    clipped = np.clip(np.array([float(value)]), f.min, f.max)
    assert out.x[0, 0] == scale_numeric(f, clipped).astype(np.float32)[0]


def test_missing_columns_and_fields() -> None:
    contract = _contract(
        [
            {"name": "n", "type": "numeric", "min": 0, "max": 10, "missing": "impute", "impute": 5},
            {"name": "c", "type": "categorical", "vocabulary": ["a"]},
            {"name": "b", "type": "binary", "missing": "impute", "impute": True},
        ]
    )
    encoder = Encoder(contract)
    out = encoder.encode_records([{}, {"n": 10, "c": "a", "b": "no"}])
    assert_same(out, reference(encoder, [{}, {"n": 10, "c": "a", "b": "no"}]))
    assert out.x.tolist() == [[0.5, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]
    with pytest.raises(KeyError, match="c"):
        encoder.encode_columns({"n": [1], "b": ["yes"]}, 1)
    with pytest.raises(ValueError, match="has 2 values, expected 1"):
        encoder.encode_columns({"n": [1, 2], "c": ["a"], "b": ["yes"]}, 1)


def test_real_contracts_on_real_records(telco_csv: Any) -> None:
    """The shipped Telco contract (with its transforms, if any) over real rows, as text and as the
    API's JSON types (numbers as floats)."""
    from pathlib import Path

    from client.data_source import read_records
    from common.contract import load_contract

    contract = load_contract(Path(__file__).resolve().parents[1] / "contracts" / "telco_churn.yaml")
    encoder = Encoder(contract)
    frame = read_records(telco_csv).head(2000)
    rows = frame[contract.feature_names].to_dict(orient="records")
    assert_same(encoder.encode_records(rows), reference(encoder, rows))
    for i in range(0, 40):  # one record at a time: the small-batch path
        assert_same(encoder.encode_records(rows[i : i + 1]), reference(encoder, rows[i : i + 1]))
    assert_same(encoder.encode_records(rows), encoder.encode(frame))  # the nodes' own frame
    numeric = {f.name for f in contract.features if f.type == "numeric"}

    def as_json(v: Any, name: str) -> Any:
        if name in numeric and isinstance(v, str) and v.strip():
            return float(v)
        return v

    typed = [{k: as_json(v, k) for k, v in r.items()} for r in rows]
    assert_same(encoder.encode_records(typed), reference(encoder, typed))


@pytest.mark.parametrize("rows", [1, 30])  # the small-batch path and the vectorised one
def test_signed_zeros_and_values_at_the_bounds_bit_for_bit(rows: int) -> None:
    """np.clip keeps a value equal to a bound as it is (-0.0 at a bound of 0.0 stays -0.0) —
    found by the property test above; pinned here."""
    contract = _contract(
        [
            {"name": "a", "type": "numeric", "min": 0.0, "max": 1.0},
            {"name": "b", "type": "numeric", "min": -1.0, "max": -0.0},
            {"name": "c", "type": "numeric", "min": 0.0, "max": 9.0, "transform": "log1p"},
            {"name": "d", "type": "numeric", "min": -2.0, "max": 2.0, "center": 0.0, "scale": 2.0},
        ]
    )
    encoder = Encoder(contract)
    cells = [-0.0, 0.0, 1.0, -1.0, 9.0, -2.0, 2.0, 5e-324, -5e-324, 1e300, "-0", " -0.0 "]
    records = [{n: cells[(i + k) % len(cells)] for k, n in enumerate("abcd")} for i in range(rows)]
    assert_same(encoder.encode_records(records), reference(encoder, records))
