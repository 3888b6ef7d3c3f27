"""`Encoder`: the contract's reference encoding of a frame (pandas); the rules are in the
package docstring (`common.encoding`), the same rules without pandas in `rows`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from common.contract import BinaryFeature, CategoricalFeature, Contract, NumericFeature
from common.encoding.base import (
    OTHER,
    REJECT_MISSING,
    REJECT_NOT_A_NUMBER,
    REJECT_NOT_BINARY,
    REJECT_NOT_FINITE,
    REJECT_UNKNOWN_CATEGORY,
    Encoded,
    EncodingStats,
    is_missing,
    scale_numeric,
)
from common.encoding.rows import _encode_columns, _RowPath


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
