"""Numeric transforms fixed by the contract (log1p, standardisation) and `atoll contract draft`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from atoll.cli import app
from client.data_source import read_records
from client.validation import validate
from common.contract import ContractError, NumericFeature, load_contract, parse_contract
from common.contract_draft import REVIEW, DraftError, draft_contract
from common.encoding import Encoder, numeric_neutral

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts"
runner = CliRunner()


def contract_data(**numeric: Any) -> dict[str, Any]:
    spend = {"name": "spend", "type": "numeric", "min": 0, "max": 1000, **numeric}
    return {
        "name": "tx",
        "version": 1,
        "task": "churn",
        "label": {"column": "y", "positive": "1"},
        "id": "cid",
        "features": [spend, {"name": "plan", "type": "categorical", "vocabulary": ["a", "b"]}],
    }


def spend_of(values: list[object], **numeric: Any) -> tuple[np.ndarray, Any]:
    """Encode a `spend` column (plan fixed) with a contract of the given numeric options."""
    enc = Encoder(parse_contract(contract_data(**numeric)))
    out = enc.encode(pd.DataFrame({"spend": values, "plan": ["a"] * len(values)}, dtype=object))
    return out.x[:, enc.groups["spend"][0]], out


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(ContractError) as info:
        parse_contract(data, source="'tx.yaml'")
    return str(info.value)


# ---- encoding ---------------------------------------------------------------------------------


def test_log1p_then_min_max_over_the_transformed_bounds_with_clipping_counted() -> None:
    x, out = spend_of(["0", "9", "99", "1000", "-5", "5000"], transform="log1p")
    top = math.log1p(1000)
    expected = [0, math.log1p(9) / top, math.log1p(99) / top, 1, 0, 1]
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    assert out.keep.all() and out.stats.clipped["spend"] == 2
    assert x.dtype == np.float32


def test_log1p_with_a_positive_min_maps_min_to_zero() -> None:
    x, _ = spend_of(["10", "1000"], transform="log1p", min=10)
    np.testing.assert_allclose(x, [0, 1], atol=1e-7)
    half = math.expm1((math.log1p(10) + math.log1p(1000)) / 2)
    np.testing.assert_allclose(spend_of([str(half)], transform="log1p", min=10)[0], [0.5], 1e-6)


def test_standardisation_with_and_without_log1p() -> None:
    x, out = spend_of(["500", "750", "250", "5000", "-1"], center=500, scale=250)
    np.testing.assert_allclose(x, [0, 1, -1, 2, -2])  # 5000 -> 1000, -1 -> 0: clipped
    assert out.stats.clipped["spend"] == 2
    centre = math.log1p(99)
    x, _ = spend_of(["99", "0", "1000"], transform="log1p", center=centre, scale=0.5)
    np.testing.assert_allclose(
        x, [0, (0 - centre) / 0.5, (math.log1p(1000) - centre) / 0.5], rtol=1e-6
    )


def test_missing_and_bad_values_are_handled_exactly_as_without_a_transform() -> None:
    messy = ["", None, " ", "abc", "inf", "nan", "-inf", "12", " 7 "]
    for policy in ({}, {"missing": "impute", "impute": 99}):
        plain = spend_of(messy, **policy)[1]
        for options in ({"transform": "log1p"}, {"center": 3, "scale": 2}):
            x, out = spend_of(messy, **policy, **options)
            assert out.keep.tolist() == plain.keep.tolist()
            assert out.row_errors == plain.row_errors
            assert out.stats == plain.stats
            assert np.isfinite(x).all()
    x, out = spend_of(["", "99"], missing="impute", impute=99, transform="log1p")
    assert out.keep.all() and x[0] == x[1]  # imputed in raw units, then transformed


def test_the_contracts_own_per_value_encoding_matches_the_encoder() -> None:
    options = [{}, {"transform": "log1p"}, {"center": 100, "scale": 50}]
    options.append({"transform": "log1p", "center": 4.0, "scale": 1.5})
    raw = [-3.0, 0.0, 0.5, 17.0, 333.3, 1000.0, 4000.0]
    for opts in options:
        f = parse_contract(contract_data(**opts)).feature("spend")
        assert isinstance(f, NumericFeature)
        x, _ = spend_of([str(v) for v in raw], **opts)
        np.testing.assert_allclose(x, [f.encode_value(v) for v in raw], rtol=1e-6, atol=1e-7)
        assert f.encoded_bounds == (pytest.approx(float(x[0])), pytest.approx(float(x[-1])))


def test_shipped_contracts_encode_as_before_transforms_existed(telco_csv: Path) -> None:
    contract = load_contract(CONTRACTS / "telco_churn.yaml")
    frame = read_records(telco_csv)
    enc = Encoder(contract)
    x = enc.encode(frame).x
    for f in contract.features:
        if isinstance(f, NumericFeature):
            assert (f.transform, f.center, f.scale) == (None, None, None)
            values = pd.to_numeric(frame[f.name], errors="coerce").fillna(f.impute or 0)
            old = ((np.clip(values, f.min, f.max) - f.min) / (f.max - f.min)).astype(np.float32)
            np.testing.assert_array_equal(x[:, enc.groups[f.name][0]], old.to_numpy())


# ---- the contract -----------------------------------------------------------------------------


def test_hash_changes_with_a_transform_and_its_parameters() -> None:
    base = parse_contract(contract_data()).hash
    logged = parse_contract(contract_data(transform="log1p")).hash
    standard = parse_contract(contract_data(center=500, scale=250)).hash
    both = parse_contract(contract_data(transform="log1p", center=5, scale=1)).hash
    moved = parse_contract(contract_data(transform="log1p", center=5.5, scale=1)).hash
    assert len({base, logged, standard, both, moved}) == 5
    assert parse_contract(contract_data(transform="log1p")).hash == logged


def test_unset_transform_keys_are_not_dumped_so_old_hashes_and_registries_stay_valid() -> None:
    contract = parse_contract(contract_data())
    spend = contract.model_dump(mode="json")["features"][0]
    assert not {"transform", "center", "scale"} & set(spend)
    assert spend["missing"] == "reject" and "impute" in spend  # other defaults still dumped
    explicit = parse_contract(contract_data(transform=None, center=None, scale=None))
    assert explicit.hash == contract.hash
    logged = parse_contract(contract_data(transform="log1p", center=5, scale=1))
    assert parse_contract(yaml.safe_load(logged.canonical_json())) == logged


@pytest.mark.parametrize("low", [-1, -1.5, -100])
def test_log1p_needs_min_above_minus_one(low: float) -> None:
    message = refused(contract_data(transform="log1p", min=low))
    assert "'spend'" in message and "log1p" in message and "min > -1" in message
    parse_contract(contract_data(transform="log1p", min=-0.5))  # allowed
    parse_contract(contract_data(min=low))  # without log1p any finite min is fine


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"center": 1, "scale": 0}, ["'spend'", "scale must be > 0"]),
        ({"center": 1, "scale": -2}, ["'spend'", "scale must be > 0"]),
        ({"center": 1}, ["'spend'", "both 'center' and 'scale'"]),
        ({"scale": 1}, ["'spend'", "both 'center' and 'scale'"]),
        ({"center": 1, "scale": 1e-9}, ["'spend'", "transformed space"]),
        ({"center": float("nan"), "scale": 1}, ["center", "'spend'", "finite"]),
        ({"transform": "log"}, ["'spend'", "transform", "log1p"]),
    ],
)
def test_bad_scaling_is_refused_naming_the_feature(options, expected: list[str]) -> None:
    message = refused(contract_data(**options))
    for part in expected:
        assert part in message, message


def test_neutral_value_is_the_middle_of_the_transformed_range_or_the_impute_value() -> None:
    from server.api.explain import neutral_baseline

    plain = parse_contract(contract_data(missing="impute", impute=250))
    enc = Encoder(plain)  # no transform: the same baseline scoring has always used
    spend = plain.feature("spend")
    assert isinstance(spend, NumericFeature)
    assert numeric_neutral(spend) == pytest.approx(neutral_baseline(enc)[enc.groups["spend"][0]])
    assert numeric_neutral(spend) == pytest.approx(0.25)

    logged = parse_contract(contract_data(transform="log1p", center=3, scale=2)).feature("spend")
    assert isinstance(logged, NumericFeature)
    assert numeric_neutral(logged) == pytest.approx((math.log1p(1000) / 2 - 3) / 2)
    imputed = parse_contract(contract_data(transform="log1p", missing="impute", impute=99))
    f = imputed.feature("spend")
    assert isinstance(f, NumericFeature)
    assert numeric_neutral(f) == pytest.approx(math.log1p(99) / math.log1p(1000))


# ---- drafting ---------------------------------------------------------------------------------


def test_the_telco_draft_validates_and_encodes_its_own_file(telco_csv: Path) -> None:
    frame = read_records(telco_csv)
    draft = draft_contract(frame, label="Churn", positive="Yes", source=str(telco_csv))
    c = draft.contract
    assert (c.label.column, c.label.positive, c.id, c.task) == (
        "Churn",
        "Yes",
        "customerID",
        "churn",
    )
    kinds = {f.name: f.type for f in c.features}
    assert kinds["SeniorCitizen"] == kinds["Partner"] == "binary"
    assert kinds["tenure"] == kinds["MonthlyCharges"] == kinds["TotalCharges"] == "numeric"
    assert kinds["Contract"] == kinds["PaymentMethod"] == "categorical"
    assert c.drop == ["gender"] and "gender" in draft.dropped  # protected attribute, for review
    total = c.feature("TotalCharges")  # 11 blanks in the file
    assert isinstance(total, NumericFeature) and total.missing == "impute"

    data = validate(frame, c)
    r = data.report
    assert r.rows_rejected == 0 and r.rejected_by_reason == {}
    assert r.values_clipped == {} and r.unknown_categories == {}
    assert data.x.shape[0] == len(frame) and np.isfinite(data.x).all()

    assert parse_contract(yaml.safe_load(draft.yaml)) == c
    assert str(telco_csv.parent) not in draft.yaml  # the file's name only, not where it lives


def test_the_draft_marks_every_data_derived_value_for_review(telco_csv: Path) -> None:
    draft = draft_contract(read_records(telco_csv), label="Churn", positive="Yes")
    lines = draft.yaml.splitlines()
    assert "Before sharing the contract with the other nodes" in " ".join(draft.yaml.split())
    marked = [line for line in lines if f"# {REVIEW}:" in line]
    for f in draft.contract.features:
        block = _feature_block(lines, f.name)
        if f.type == "numeric":
            assert any(line.strip().startswith("min:") and REVIEW in line for line in block)
            assert any(line.strip().startswith("max:") and REVIEW in line for line in block)
        if f.type == "categorical":
            assert any(REVIEW in line and "values seen" in line for line in block), f.name
        if getattr(f, "missing", None) == "impute":
            assert any(line.strip().startswith("impute:") and REVIEW in line for line in block)
    assert len(marked) == len(draft.review)  # one marked line per item to review
    assert any("gender" in line and REVIEW in line for line in lines)


def _feature_block(lines: list[str], name: str) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line == f'  - name: "{name}"')
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("  - ")), len(lines))
    return lines[start:end]  # a field's long comment sits on its own line inside the block


def skewed_frame(n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    spend = np.round(rng.lognormal(3, 1.2, n), 2)
    balance = np.round(rng.lognormal(5, 1.5, n) - 500, 0)  # skewed, but below -1
    plan = rng.choice(["basic", "pro", "max"], n, p=[0.6, 0.38, 0.02])
    return pd.DataFrame(
        {
            "account_id": [f"A{i:05d}" for i in range(n)],
            "spend": spend.astype(str),
            "balance": balance.astype(str),
            "age": rng.integers(18, 90, n).astype(str),
            "plan": plan,
            "autopay": rng.choice(["Y", "N", ""], n, p=[0.5, 0.45, 0.05]),
            "row_number": np.arange(n).astype(str),
            "country": ["NL"] * n,
            "email": [f"c{i}@example.org" for i in range(n)],
            "Converted": rng.choice(["true", "false"], n),
        },
        dtype=object,
    )


def test_a_skewed_nonnegative_column_gets_log1p_with_centre_and_scale_to_review() -> None:
    frame = skewed_frame()
    draft = draft_contract(frame, task="propensity", name="shop")
    c = draft.contract
    assert (c.label.column, c.label.positive, c.id, c.name) == (
        "Converted",
        "true",
        "account_id",
        "shop",
    )
    spend = c.feature("spend")
    assert isinstance(spend, NumericFeature) and spend.transform == "log1p"
    logged = np.log1p(pd.to_numeric(frame["spend"]))
    assert spend.center == pytest.approx(logged.mean(), rel=1e-3)
    assert spend.scale == pytest.approx(logged.std(ddof=0), rel=1e-3)
    balance, age = c.feature("balance"), c.feature("age")
    assert isinstance(balance, NumericFeature) and balance.transform is None  # min <= -1
    assert isinstance(age, NumericFeature) and age.transform is None  # not skewed
    assert c.feature("autopay").type == "binary"
    assert set(draft.dropped) == {"row_number", "country", "email"}

    block = _feature_block(draft.yaml.splitlines(), "spend")
    assert any(line.strip().startswith("center:") and REVIEW in line for line in block)
    assert any(line.strip().startswith("scale:") and REVIEW in line for line in block)
    assert f"{REVIEW}: rare here" in draft.yaml and '"max"' in draft.yaml  # 2 % of rows

    data = validate(frame, c)
    assert data.report.rows_rejected == 0 and np.isfinite(data.x).all()
    col = Encoder(c).groups["spend"][0]
    assert abs(float(data.x[:, col].mean())) < 0.05 and 0.9 < float(data.x[:, col].std()) < 1.1


def test_draft_errors_name_the_problem() -> None:
    frame = skewed_frame(60)
    with pytest.raises(DraftError, match="label column 'churn' is not in the data"):
        draft_contract(frame, label="churn")
    with pytest.raises(DraftError, match="positive value 'yes' does not occur"):
        draft_contract(frame, positive="yes")
    with pytest.raises(DraftError, match="id column 'cid' is not in the data"):
        draft_contract(frame, id_column="cid")
    with pytest.raises(DraftError, match="--label"):
        draft_contract(frame.drop(columns=["Converted"]))
    with pytest.raises(DraftError, match="task"):
        draft_contract(frame, task="fraud")
    with pytest.raises(DraftError, match="name"):
        draft_contract(frame, name="Not A Name")
    no_id = draft_contract(frame.drop(columns=["account_id"]))
    assert no_id.contract.id == "customer_id" and "id-from-row" in no_id.yaml


# ---- the command ------------------------------------------------------------------------------


def test_cli_draft_writes_the_contract_and_warns_on_stderr(telco_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "draft.yaml"
    args = ["contract", "draft", "--data", str(telco_csv), "--label", "Churn", "--out", str(out)]
    res = runner.invoke(app, [*args, "--positive", "Yes", "--name", "telco-draft"])
    assert res.exit_code == 0, res.output
    assert load_contract(out).name == "telco-draft"
    warning = " ".join(res.stderr.split())
    assert "REVIEW" in warning and "round numeric ranges outward" in warning
    again = runner.invoke(app, args)
    assert again.exit_code != 0 and "exists" in again.output  # never overwritten silently
    to_stdout = runner.invoke(app, ["contract", "draft", "--data", str(telco_csv)])
    assert to_stdout.exit_code == 0 and to_stdout.stdout.startswith("# DRAFT data contract")
    assert parse_contract(yaml.safe_load(to_stdout.stdout)).label.column == "Churn"


def test_cli_draft_errors_exit_non_zero_without_a_traceback(
    telco_csv: Path, tmp_path: Path
) -> None:
    cases = [
        (["--data", str(telco_csv), "--label", "Nope"], "label column 'Nope' is not in the data"),
        (["--data", str(tmp_path / "absent.csv")], "not found"),
        (["--data", str(telco_csv), "--positive", "Maybe"], "positive value 'Maybe'"),
    ]
    for extra, expected in cases:
        res = runner.invoke(app, ["contract", "draft", *extra])
        assert res.exit_code == 2, (extra, res.output)
        text = " ".join(res.output.split())
        assert expected in text and "Traceback" not in text, text
        assert isinstance(res.exception, SystemExit)


def test_cli_check_accepts_a_contract_with_transforms(tmp_path: Path) -> None:
    data = contract_data(transform="log1p", center=5, scale=1.5)
    path = tmp_path / "tx.yaml"
    path.write_text(yaml.safe_dump(data))
    res = runner.invoke(app, ["contract", "check", str(path)])
    assert res.exit_code == 0 and parse_contract(data).hash in " ".join(res.output.split())
