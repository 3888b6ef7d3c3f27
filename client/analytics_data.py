"""The node's validated data as per-field columns, for analytics (never leaves the node).

`NodeData` holds the contract's *encoding* (train and test rows). Every encoding is a function
of the contract alone, so the validated per-field values can be read back from it without a
second read of the data source: a categorical feature is the position of its one-hot column
(the vocabulary's, or `<other>`), a binary feature is 0/1, a numeric feature is its contract-
clipped value (the scaling inverted, rounded to the decimals float32 keeps: ~1e-6 of the
range). Analytics runs over all of the node's validated rows (train and test together) and the
label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from client.node import NodeData
from common.contract import BinaryFeature, CategoricalFeature, Contract, NumericFeature
from common.encoding import Encoder


@dataclass
class FieldTable:
    rows: int
    categorical: dict[str, np.ndarray]  # feature → int codes; len(vocabulary) means <other>
    binary: dict[str, np.ndarray]  # feature → bool
    numeric: dict[str, np.ndarray]  # feature → float64 values clipped to [min, max]
    label: np.ndarray  # bool: the contract's positive label


def decode_numeric(f: NumericFeature, encoded: np.ndarray) -> np.ndarray:
    """The clipped raw value behind an encoded numeric column (inverse of `scale_numeric`)."""
    x = encoded.astype(np.float64)
    if f.center is not None and f.scale is not None:
        t = x * f.scale + f.center
    else:
        lo, hi = f.transformed_bounds
        t = lo + x * (hi - lo)
    values = np.expm1(t) if f.transform == "log1p" else t
    return np.clip(np.round(values, _decimals(f)), f.min, f.max)


def _decimals(f: NumericFeature) -> int:
    """Decimals that hold the float32 encoding's error: 12 stays 12, not 12.0000005 (filters
    and bin edges are exact on the data's own precision, e.g. integers or cents)."""
    lo, hi = f.encoded_bounds
    per_unit = (
        f.scale if f.scale is not None else (f.transformed_bounds[1] - f.transformed_bounds[0])
    )
    err = 2.0**-23 * max(abs(lo), abs(hi), 1.0) * per_unit  # in the transformed space
    if f.transform == "log1p":
        err *= 1 + max(abs(f.min), abs(f.max))
    return max(0, math.floor(-math.log10(2 * err)))


def field_table(data: NodeData, contract: Contract) -> FieldTable:
    x = np.concatenate([data.x_train, data.x_test], axis=0)
    y = np.concatenate([data.y_train, data.y_test], axis=0)
    groups = Encoder(contract).groups
    table = FieldTable(rows=len(x), categorical={}, binary={}, numeric={}, label=y > 0.5)
    for f in contract.features:
        cols = groups[f.name]
        if isinstance(f, CategoricalFeature):
            table.categorical[f.name] = np.argmax(x[:, cols], axis=1).astype(np.int64)
        elif isinstance(f, BinaryFeature):
            table.binary[f.name] = x[:, cols[0]] > 0.5
        else:
            table.numeric[f.name] = decode_numeric(f, x[:, cols[0]])
    return table
