"""What an encoding is made of: reject reasons, counted problems, the scaled numeric column."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from common.contract import NumericFeature

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
