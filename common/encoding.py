"""Records → tensors, determined by the contract alone.

Numeric features are clipped to the agreed range (counted), optionally transformed (`log1p`) and
scaled: standardised with the contract's `center`/`scale` (transformed space) when it gives them,
else mapped to [0, 1] over the transformed bounds. Categorical features are one-hot over the agreed
vocabulary plus an "other" bucket; binary features map to 0/1. Nothing is estimated from a node's
data, so every node and the scoring API produce identical encodings. Every problem is *counted* per
feature and reason; no value is ever put into a message.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from common.contract import BinaryFeature, CategoricalFeature, Contract, NumericFeature

OTHER = "<other>"

# Why a row could not be encoded; these names appear in data-quality reports and API errors.
REJECT_MISSING = "missing"
REJECT_NOT_A_NUMBER = "not_a_number"
REJECT_NOT_FINITE = "not_finite"
REJECT_NOT_BINARY = "not_binary"
REJECT_UNKNOWN_CATEGORY = "unknown_category"


@dataclass
class EncodingStats:
    """Counts only — safe to leave a node."""

    rows: int = 0
    rows_rejected: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # "feature:reason" -> rows
    clipped: Counter[str] = field(default_factory=Counter)  # feature -> values clipped
    unknown_category: Counter[str] = field(default_factory=Counter)  # feature -> values to OTHER
    missing: Counter[str] = field(default_factory=Counter)  # feature -> missing values (any policy)


@dataclass
class Encoded:
    x: np.ndarray  # float32 [n_kept, n_features]
    keep: np.ndarray  # bool [n_rows]: rows that were encoded (others rejected)
    row_errors: dict[int, list[tuple[str, str]]]  # row position -> [(feature, reason)]
    stats: EncodingStats


def is_missing(s: pd.Series) -> pd.Series:
    as_str = s.astype("string").str.strip()
    return s.isna() | as_str.isna() | (as_str == "")


def scale_numeric(f: NumericFeature, clipped: np.ndarray) -> np.ndarray:
    """Values already clipped to [f.min, f.max] → transform → scale, in float64."""
    values = np.log1p(clipped) if f.transform == "log1p" else clipped
    if f.center is not None and f.scale is not None:
        return (values - f.center) / f.scale
    lo, hi = f.transformed_bounds
    return (values - lo) / (hi - lo)


def numeric_neutral(f: NumericFeature) -> float:
    """The encoded "no information" value of a numeric feature (reason-code occlusion baseline).

    The impute value if the contract has one, else the middle of the range — taken in the
    transformed space, i.e. the value whose encoding is halfway between the encoded bounds (0.5
    under min-max scaling, as before transforms existed).
    """
    if f.impute is not None:
        return f.encode_value(f.impute)
    lo, hi = f.encoded_bounds
    return (lo + hi) / 2


class Encoder:
    """Deterministic encoder for one contract."""

    def __init__(self, contract: Contract, strict_categories: bool = False) -> None:
        self.contract = contract
        # strict_categories: reject unknown categories instead of mapping them to OTHER.
        self.strict_categories = strict_categories
        self.columns: list[str] = []
        self.groups: dict[str, list[int]] = {}
        for f in contract.features:
            start = len(self.columns)
            if isinstance(f, CategoricalFeature):
                self.columns += [f"{f.name}={v}" for v in f.vocabulary] + [f"{f.name}={OTHER}"]
            else:
                self.columns.append(f.name)
            self.groups[f.name] = list(range(start, len(self.columns)))

    @property
    def n_features(self) -> int:
        return len(self.columns)

    def encode(self, frame: pd.DataFrame) -> Encoded:
        """Encode the contract's features of `frame` (missing columns raise KeyError by name)."""
        n = len(frame)
        x = np.zeros((n, self.n_features), dtype=np.float32)
        bad = np.zeros(n, dtype=bool)
        stats = EncodingStats(rows=n)
        row_errors: dict[int, list[tuple[str, str]]] = {}

        def reject(mask: np.ndarray, feature: str, reason: str) -> None:
            idx = np.flatnonzero(mask)
            if idx.size == 0:
                return
            stats.rejected[f"{feature}:{reason}"] += int(idx.size)
            for i in idx:
                row_errors.setdefault(int(i), []).append((feature, reason))
            bad[idx] = True

        for f in self.contract.features:
            col = frame[f.name]
            missing = is_missing(col).to_numpy()
            stats.missing[f.name] += int(missing.sum())
            cols = self.groups[f.name]
            if isinstance(f, NumericFeature):
                x[:, cols[0]] = self._numeric(f, col, missing, stats, reject)
            elif isinstance(f, CategoricalFeature):
                x[:, cols] = self._categorical(f, col, missing, stats, reject)
            else:
                x[:, cols[0]] = self._binary(f, col, missing, reject)

        keep = ~bad
        stats.rows_rejected = int(bad.sum())
        return Encoded(x=x[keep], keep=keep, row_errors=row_errors, stats=stats)

    def _numeric(self, f: NumericFeature, col: pd.Series, missing, stats, reject) -> np.ndarray:
        values = pd.to_numeric(col.where(~missing), errors="coerce").to_numpy(dtype=np.float64)
        unparsable = ~missing & np.isnan(values)
        not_finite = ~missing & np.isinf(values)
        reject(unparsable, f.name, REJECT_NOT_A_NUMBER)
        reject(not_finite, f.name, REJECT_NOT_FINITE)
        if f.missing == "reject":
            reject(missing, f.name, REJECT_MISSING)
        else:
            values = np.where(missing, f.impute, values)
        ok = np.isfinite(values)
        clipped = ok & ((values < f.min) | (values > f.max))
        stats.clipped[f.name] += int(clipped.sum())
        values = np.clip(np.where(ok, values, f.min), f.min, f.max)
        return scale_numeric(f, values).astype(np.float32)

    def _categorical(
        self, f: CategoricalFeature, col: pd.Series, missing, stats, reject
    ) -> np.ndarray:
        values = col.astype("string").str.strip().fillna("").to_numpy(dtype=object)
        index = {v: i for i, v in enumerate(f.vocabulary)}
        pos = np.array([index.get(v, -1) for v in values], dtype=np.int64)
        unknown = (pos < 0) & ~missing
        stats.unknown_category[f.name] += int(unknown.sum())
        if self.strict_categories:
            reject(unknown, f.name, REJECT_UNKNOWN_CATEGORY)
        if f.missing == "reject":
            reject(missing, f.name, REJECT_MISSING)
        pos = np.where(pos < 0, len(f.vocabulary), pos)  # unknown and missing -> OTHER
        out = np.zeros((len(values), len(f.vocabulary) + 1), dtype=np.float32)
        out[np.arange(len(values)), pos] = 1.0
        return out

    def _binary(self, f: BinaryFeature, col: pd.Series, missing, reject) -> np.ndarray:
        values = col.astype("string").str.strip().fillna("").to_numpy(dtype=object)
        true = np.isin(values, f.true_values)
        false = np.isin(values, f.false_values)
        reject(~missing & ~true & ~false, f.name, REJECT_NOT_BINARY)
        if f.missing == "reject":
            reject(missing, f.name, REJECT_MISSING)
        elif f.impute:
            true = true | missing
        return true.astype(np.float32)

    def encode_records(self, records: Sequence[Mapping[str, object]]) -> Encoded:
        """`encode` of the contract's features of `records` (dicts; a missing key is a missing
        value), without building a frame: identical x, keep, row_errors and stats to
        `encode(pd.DataFrame(records, dtype=object))`, several times faster for small batches."""
        columns = {f.name: [r.get(f.name) for r in records] for f in self.contract.features}
        return _encode_columns(self, columns, len(records))

    def encode_columns(self, columns: Mapping[str, Sequence[object]], n_rows: int) -> Encoded:
        """`encode` of `n_rows` rows given as one sequence of values per feature (missing
        columns raise KeyError by name), identical to `encode(pd.DataFrame(columns,
        dtype=object))`; see `encode_records`."""
        return _encode_columns(self, columns, n_rows)

    def _row_path(self) -> _RowPath:
        path = self.__dict__.get("_row_path_cache")
        if path is None:
            path = self.__dict__["_row_path_cache"] = _RowPath(self)
        return path

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        """1.0 where the label equals the contract's positive value, else 0.0."""
        col = frame[self.contract.label.column].astype("string").str.strip()
        return (col == self.contract.label.positive).fillna(False).to_numpy(dtype=np.float32)


# ---- the row path: the same encoding from plain Python values, without pandas ------------------
#
# `Encoder.encode_records` / `encode_columns` give exactly what `Encoder.encode` gives for a frame
# of the same values (dtype=object): same x (bit for bit), keep, row_errors and stats. A request of
# one record is too small for pandas to pay off (building a frame and a dozen Series per feature
# cost more than the arithmetic), so the scoring API uses this path. Each cell is read the way
# pandas reads it — missing (`is_missing`), text (`astype("string").str.strip()`) and number
# (`pd.to_numeric(errors="coerce")`) — by direct Python for the common types (None, str, bool,
# int, float) and by pandas itself, one cell at a time, for anything else, so exotic values cannot
# drift apart. Everything after reading the cells is the same numpy code as `encode`.

# Number syntax both `float()` and pandas' parser accept identically; anything else goes to pandas.
_NUMBER_TEXT = re.compile(
    r"[ \t\n\r\f\v]*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[ \t\n\r\f\v]*"
    r"|[+-]?(?:inf|infinity|nan)",  # pandas reads these spellings only without whitespace
    re.IGNORECASE | re.ASCII,
)


def _pandas_cell(value: object) -> tuple[str | None, float]:
    """(text or None when missing, number or NaN) of one cell, read by pandas itself."""
    col = pd.Series([value], dtype=object)
    missing = bool(is_missing(col).iloc[0])
    text = None if missing else str(col.astype("string").str.strip().iloc[0])
    if missing:
        return None, math.nan
    number = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)[0]
    return text, float(number)


def cell_text(value: object) -> str | None:
    """The stripped text `encode` sees in one cell; None where it sees a missing value."""
    if type(value) is str:
        return value.strip() or None
    if value is None:
        return None
    if type(value) is bool or type(value) is int:
        return str(value)
    if type(value) is float:
        return None if value != value else str(value)  # NaN is missing
    return _pandas_cell(value)[0]


def cell_number(value: object) -> float:
    """The number `encode` reads from one non-missing cell (NaN when it is not a number)."""
    if type(value) is float:
        return value
    if type(value) is int or type(value) is bool:
        return float(value)  # OverflowError beyond float's range, as in pandas
    if type(value) is str and _NUMBER_TEXT.fullmatch(value):
        return float(value)
    return _pandas_cell(value)[1]


class _RowPath:
    """Per-contract constants of the row path, built once per encoder.

    Features are handled a kind at a time (all numeric features in one array, and so on), so a
    request of one record costs a handful of numpy calls instead of a dozen per feature. Every
    arithmetic step is the one `encode` does, element by element, in the same dtype.
    """

    def __init__(self, encoder: Encoder) -> None:
        features = encoder.contract.features
        self.numeric = [f for f in features if isinstance(f, NumericFeature)]
        self.categorical = [f for f in features if isinstance(f, CategoricalFeature)]
        self.binary = [f for f in features if isinstance(f, BinaryFeature)]
        self.numeric_names = [f.name for f in self.numeric]
        self.categorical_names = [f.name for f in self.categorical]
        self.binary_names = [f.name for f in self.binary]
        num = self.numeric
        self.num_cols = np.array([encoder.groups[f.name][0] for f in num], dtype=np.intp)
        self.num_min = np.array([f.min for f in num], dtype=np.float64)
        self.num_max = np.array([f.max for f in num], dtype=np.float64)
        self.num_reject = np.array([f.missing == "reject" for f in num], dtype=bool)
        self.num_impute = np.array(
            [np.nan if f.impute is None else f.impute for f in num], dtype=np.float64
        )
        self.num_log1p = [j for j, f in enumerate(num) if f.transform == "log1p"]
        # scale_numeric: (t - center) / scale, or (t - lo) / (hi - lo) over the transformed bounds
        offsets, divisors = [], []
        for f in num:
            if f.center is not None and f.scale is not None:
                offsets.append(f.center)
                divisors.append(f.scale)
            else:
                lo, hi = f.transformed_bounds
                offsets.append(lo)
                divisors.append(hi - lo)
        self.num_offset = np.array(offsets, dtype=np.float64)
        self.num_divisor = np.array(divisors, dtype=np.float64)
        self.cat_index = [{v: i for i, v in enumerate(f.vocabulary)} for f in self.categorical]
        self.cat_start = np.array(
            [encoder.groups[f.name][0] for f in self.categorical], dtype=np.int64
        )
        self.cat_other = np.array([len(f.vocabulary) for f in self.categorical], dtype=np.int64)
        self.cat_reject = np.array([f.missing == "reject" for f in self.categorical], dtype=bool)
        self.bin_true = [frozenset(f.true_values) for f in self.binary]
        self.bin_false = [frozenset(f.false_values) for f in self.binary]
        self.bin_cols = np.array([encoder.groups[f.name][0] for f in self.binary], dtype=np.intp)
        self.bin_impute = np.array(
            [f.missing != "reject" and bool(f.impute) for f in self.binary], dtype=bool
        )
        self.bin_reject = np.array([f.missing == "reject" for f in self.binary], dtype=bool)
        # Rejection checks in the order `encode` makes them: features in contract order, then
        # reasons in the order of each kind's method.
        kinds: tuple[Sequence[Any], ...] = (self.numeric, self.categorical, self.binary)
        kind_of = {id(g): (k, j) for k, group in enumerate(kinds) for j, g in enumerate(group)}
        self.order: list[tuple[str, str, int, int]] = []  # (feature, reason, kind, index)
        for feature in features:
            kind, j = kind_of[id(feature)]
            if kind == 0:
                reasons = [REJECT_NOT_A_NUMBER, REJECT_NOT_FINITE]
            elif kind == 1:
                reasons = [REJECT_UNKNOWN_CATEGORY] if encoder.strict_categories else []
            else:
                reasons = [REJECT_NOT_BINARY]
            reasons += [REJECT_MISSING] if feature.missing == "reject" else []
            self.order += [(feature.name, reason, kind, j) for reason in reasons]


def _column(columns: Mapping[str, Sequence[object]], name: str, n: int) -> Sequence[object]:
    col = columns[name]
    if len(col) != n:
        raise ValueError(f"column {name} has {len(col)} values, expected {n}")
    return col


def _texts(
    columns: Mapping[str, Sequence[object]], features: Sequence[Any], n: int
) -> list[list[str | None]]:
    """`cell_text` of every cell, per feature (text and None inlined: the common cells)."""
    return [
        [
            (v.strip() or None) if type(v) is str else None if v is None else cell_text(v)
            for v in _column(columns, f.name, n)
        ]
        for f in features
    ]


def _numbers(
    columns: Mapping[str, Sequence[object]], features: Sequence[Any], n: int
) -> tuple[list[list[bool]], list[list[float]]]:
    """(missing, number or NaN) of every cell, per feature; a float cell is its own number."""
    missing: list[list[bool]] = []
    numbers: list[list[float]] = []
    for f in features:
        miss_f: list[bool] = []
        num_f: list[float] = []
        for v in _column(columns, f.name, n):
            if type(v) is float:
                miss_f.append(v != v)  # NaN is missing (and its number is NaN)
                num_f.append(v)
            else:
                absent = cell_text(v) is None
                miss_f.append(absent)
                num_f.append(math.nan if absent else cell_number(v))
        missing.append(miss_f)
        numbers.append(num_f)
    return missing, numbers


def _encode_columns(encoder: Encoder, columns: Mapping[str, Sequence[object]], n: int) -> Encoded:
    path = encoder._row_path()
    for f in encoder.contract.features:
        columns[f.name]  # noqa: B018 - a missing column is a KeyError by name, as in `encode`
    x = np.zeros((n, encoder.n_features), dtype=np.float32)
    stats = EncodingStats(rows=n)
    masks: dict[tuple[str, int], np.ndarray] = {}  # (reason, kind) -> bool [n, features of kind]

    # numeric: parse, reject, impute, clip (counted), transform, scale -- all features at once
    num_missing, num_values = _numbers(columns, path.numeric, n)
    k = len(path.numeric)
    if k:
        miss = np.array(num_missing, dtype=bool).T.reshape(n, k)
        values = np.array(num_values, dtype=np.float64).T.reshape(n, k)
        masks[(REJECT_NOT_A_NUMBER, 0)] = ~miss & np.isnan(values)
        masks[(REJECT_NOT_FINITE, 0)] = ~miss & np.isinf(values)
        masks[(REJECT_MISSING, 0)] = miss & path.num_reject
        values = np.where(miss & ~path.num_reject, path.num_impute, values)
        ok = np.isfinite(values)
        clipped = ok & ((values < path.num_min) | (values > path.num_max))
        values = np.clip(np.where(ok, values, path.num_min), path.num_min, path.num_max)
        for j in path.num_log1p:  # one feature at a time, on a contiguous column, as `encode`
            values[:, j] = np.log1p(np.ascontiguousarray(values[:, j]))
        x[:, path.num_cols] = ((values - path.num_offset) / path.num_divisor).astype(np.float32)
        names = path.numeric_names
        stats.missing.update(dict(zip(names, miss.sum(axis=0).tolist(), strict=True)))
        stats.clipped.update(dict(zip(names, clipped.sum(axis=0).tolist(), strict=True)))

    # categorical: vocabulary position, unknown and missing to the <other> column
    cat_texts = _texts(columns, path.categorical, n)
    k = len(path.categorical)
    if k:
        miss = np.array([[t is None for t in ts] for ts in cat_texts], dtype=bool).T.reshape(n, k)
        pos = np.array(
            [
                [index.get("" if t is None else t, -1) for t in ts]
                for index, ts in zip(path.cat_index, cat_texts, strict=True)
            ],
            dtype=np.int64,
        ).T.reshape(n, k)
        unknown = (pos < 0) & ~miss
        if encoder.strict_categories:
            masks[(REJECT_UNKNOWN_CATEGORY, 1)] = unknown
        masks[(REJECT_MISSING, 1)] = miss & path.cat_reject
        pos = np.where(pos < 0, path.cat_other, pos)
        x[np.arange(n)[:, None], pos + path.cat_start] = 1.0
        names = path.categorical_names
        stats.missing.update(dict(zip(names, miss.sum(axis=0).tolist(), strict=True)))
        stats.unknown_category.update(dict(zip(names, unknown.sum(axis=0).tolist(), strict=True)))

    # binary: the contract's spellings; missing imputed or rejected
    bin_texts = _texts(columns, path.binary, n)
    k = len(path.binary)
    if k:
        miss = np.array([[t is None for t in ts] for ts in bin_texts], dtype=bool).T.reshape(n, k)
        # a missing cell's text is "" in `encode` (a contract could spell a value "")
        tokens = [["" if t is None else t for t in ts] for ts in bin_texts]
        true = np.array(
            [[t in trues for t in ts] for trues, ts in zip(path.bin_true, tokens, strict=True)],
            dtype=bool,
        ).T.reshape(n, k)
        false = np.array(
            [[t in falses for t in ts] for falses, ts in zip(path.bin_false, tokens, strict=True)],
            dtype=bool,
        ).T.reshape(n, k)
        masks[(REJECT_NOT_BINARY, 2)] = ~miss & ~true & ~false
        masks[(REJECT_MISSING, 2)] = miss & path.bin_reject
        true = true | (miss & path.bin_impute)
        x[:, path.bin_cols] = true.astype(np.float32)
        names = path.binary_names
        stats.missing.update(dict(zip(names, miss.sum(axis=0).tolist(), strict=True)))

    bad = np.zeros(n, dtype=bool)
    if masks:
        bad = np.asarray(np.concatenate(list(masks.values()), axis=1).any(axis=1), dtype=bool)
    row_errors: dict[int, list[tuple[str, str]]] = {}
    if bad.any():  # in `encode`'s order: feature by feature, reason by reason, row by row
        for feature, reason, kind, j in path.order:
            idx = np.flatnonzero(masks[(reason, kind)][:, j])
            if idx.size == 0:
                continue
            stats.rejected[f"{feature}:{reason}"] += int(idx.size)
            for i in idx:
                row_errors.setdefault(int(i), []).append((feature, reason))
    keep = ~bad
    stats.rows_rejected = int(bad.sum())
    return Encoded(x=x[keep], keep=keep, row_errors=row_errors, stats=stats)
