"""The row path: the same encoding from plain Python values, without pandas.

`Encoder.encode_records` / `encode_columns` give exactly what `Encoder.encode` gives for a frame
of the same values (dtype=object): same x (bit for bit), keep, row_errors and stats. A request of
one record is too small for pandas to pay off (building a frame and a dozen Series per feature
cost more than the arithmetic), so the scoring API uses this path. Each cell is read the way
pandas reads it — missing (`is_missing`), text (`astype("string").str.strip()`) and number
(`pd.to_numeric(errors="coerce")`) — by direct Python for the common types (None, str, bool,
int, float) and by pandas itself, one cell at a time, for anything else, so exotic values cannot
drift apart. Everything after reading the cells is the same numpy code as `encode`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from common.contract import BinaryFeature, CategoricalFeature, NumericFeature
from common.encoding.base import (
    REJECT_MISSING,
    REJECT_NOT_A_NUMBER,
    REJECT_NOT_BINARY,
    REJECT_NOT_FINITE,
    REJECT_UNKNOWN_CATEGORY,
    Encoded,
    EncodingStats,
    is_missing,
)

if TYPE_CHECKING:
    from common.encoding.encoder import Encoder


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
        kinds: tuple[Sequence[Any], ...] = (self.numeric, self.categorical, self.binary)
        self.position = {  # a feature's index among the features of its kind
            f.name: j for group in kinds for j, f in enumerate(group)
        }
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


SMALL_BATCH = 8  # up to this many rows, plain Python per cell beats a numpy call per step


def _encode_columns(encoder: Encoder, columns: Mapping[str, Sequence[object]], n: int) -> Encoded:
    for f in encoder.contract.features:
        _column(columns, f.name, n)  # a missing column is a KeyError by name, as in `encode`
    if n <= SMALL_BATCH:
        return _encode_small(encoder, columns, n)
    return _encode_vectorised(encoder, columns, n)


def _encode_small(encoder: Encoder, columns: Mapping[str, Sequence[object]], n: int) -> Encoded:
    """The row path for a few rows: the same steps as `_encode_vectorised`, cell by cell in
    Python floats (IEEE doubles, as numpy's float64), except log1p, which stays numpy's."""
    path = encoder._row_path()
    cells = [[0.0] * encoder.n_features for _ in range(n)]  # float32 once, at the end
    missing: dict[str, int] = {}
    clipped_count: dict[str, int] = {}
    unknown_count: dict[str, int] = {}
    rejected: dict[str, int] = {}
    row_errors: dict[int, list[tuple[str, str]]] = {}
    bad = [False] * n
    rows = range(n)

    def reject(hits: list[int], feature: str, reason: str) -> None:
        if hits:
            rejected[f"{feature}:{reason}"] = rejected.get(f"{feature}:{reason}", 0) + len(hits)
            for i in hits:
                row_errors.setdefault(i, []).append((feature, reason))
                bad[i] = True

    groups = encoder.groups
    for f in encoder.contract.features:
        col = columns[f.name]
        c0 = groups[f.name][0]
        if isinstance(f, NumericFeature):
            miss: list[bool] = []
            vals: list[float] = []
            for v in col:
                if type(v) is float:
                    miss.append(v != v)
                    vals.append(v)
                else:
                    absent = cell_text(v) is None
                    miss.append(absent)
                    vals.append(math.nan if absent else cell_number(v))
            missing[f.name] = sum(miss)
            reject(
                [i for i in rows if not miss[i] and vals[i] != vals[i]], f.name, REJECT_NOT_A_NUMBER
            )
            reject(
                [i for i in rows if not miss[i] and vals[i] in _INFINITIES],
                f.name,
                REJECT_NOT_FINITE,
            )
            if f.missing == "reject":
                reject([i for i in rows if miss[i]], f.name, REJECT_MISSING)
            else:
                impute = math.nan if f.impute is None else float(f.impute)
                vals = [impute if miss[i] else vals[i] for i in rows]
            lo, hi = f.min, f.max
            clipped = 0
            out: list[float] = []
            for v in vals:
                if math.isfinite(v):
                    clipped += v < lo or v > hi
                else:
                    v = lo  # np.where(ok, values, f.min)
                v = lo if v < lo else v  # np.clip: a bound only replaces a value beyond it
                out.append(hi if v > hi else v)  # (so -0.0 at a bound of 0.0 stays -0.0)
            clipped_count[f.name] = clipped
            if f.transform == "log1p":  # numpy's log1p on a contiguous float64 array, as `encode`
                out = np.log1p(np.array(out, dtype=np.float64)).tolist()
            j = path.position[f.name]
            off, div = float(path.num_offset[j]), float(path.num_divisor[j])
            for i in rows:
                cells[i][c0] = (out[i] - off) / div
        elif isinstance(f, CategoricalFeature):
            texts = [(v.strip() or None) if type(v) is str else cell_text(v) for v in col]
            missing[f.name] = sum(t is None for t in texts)
            index = path.cat_index[path.position[f.name]]
            pos = [index.get("" if t is None else t, -1) for t in texts]
            unknown = [i for i in rows if pos[i] < 0 and texts[i] is not None]
            unknown_count[f.name] = len(unknown)
            if encoder.strict_categories:
                reject(unknown, f.name, REJECT_UNKNOWN_CATEGORY)
            if f.missing == "reject":
                reject([i for i in rows if texts[i] is None], f.name, REJECT_MISSING)
            other = len(f.vocabulary)
            for i in rows:
                cells[i][c0 + (other if pos[i] < 0 else pos[i])] = 1.0
        else:
            texts = [(v.strip() or None) if type(v) is str else cell_text(v) for v in col]
            missing[f.name] = sum(t is None for t in texts)
            k = path.position[f.name]
            trues, falses = path.bin_true[k], path.bin_false[k]
            tokens = ["" if t is None else t for t in texts]
            true = [t in trues for t in tokens]
            false = [t in falses for t in tokens]
            reject(
                [i for i in rows if texts[i] is not None and not true[i] and not false[i]],
                f.name,
                REJECT_NOT_BINARY,
            )
            if f.missing == "reject":
                reject([i for i in rows if texts[i] is None], f.name, REJECT_MISSING)
            elif f.impute:
                true = [true[i] or texts[i] is None for i in rows]
            for i in rows:
                if true[i]:
                    cells[i][c0] = 1.0
    # Python floats to float32: the same round-to-nearest cast as `astype(np.float32)`.
    x = np.array(cells, dtype=np.float32).reshape(n, encoder.n_features)
    keep = ~np.array(bad, dtype=bool)
    stats = EncodingStats(
        rows=n,
        rows_rejected=sum(bad),
        rejected=Counter(rejected),
        clipped=Counter(clipped_count),
        unknown_category=Counter(unknown_count),
        missing=Counter(missing),
    )
    return Encoded(x=x[keep], keep=keep, row_errors=row_errors, stats=stats)


_INFINITIES = (math.inf, -math.inf)


def _encode_vectorised(
    encoder: Encoder, columns: Mapping[str, Sequence[object]], n: int
) -> Encoded:
    """The row path for larger batches: one numpy step per kind of feature, all rows at once."""
    path = encoder._row_path()
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
        # np.clip with scalar bounds, as `encode`: a bound replaces only a value beyond it (with
        # array bounds np.clip would turn -0.0 at a bound of 0.0 into 0.0)
        values = np.where(ok, values, path.num_min)
        values = np.where(values < path.num_min, path.num_min, values)
        values = np.where(values > path.num_max, path.num_max, values)
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
