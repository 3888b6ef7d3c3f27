"""What the drafting steps share: the REVIEW marker and warning, the thresholds that decide a
column's fate, the error, the drafted feature and a column's values as stripped text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from common.errors import AtollError

# A categorical column with more distinct values than this is dropped (identifier, free text, PII?).
MAX_CATEGORIES = 50
# A category seen in fewer rows than this is "rare": it may single out customers.
RARE_COUNT = 10
# Suggest log1p for a column with min >= 0 and at least this sample skewness (strong right skew).
SKEW_FOR_LOG1P = 1.0
# Whole numbers all distinct over at least this many rows look like an identifier: dropped.
MIN_ROWS_FOR_ID = 50
# Fewer numeric values than this: no transform is suggested (skewness means little).
MIN_VALUES_FOR_TRANSFORM = 20

REVIEW = "REVIEW"
REVIEW_WARNING = (
    "This draft is computed from your own data and reveals things about it: exact minima and "
    "maxima, category vocabularies (rare values included), centres/scales and imputation values. "
    f"Every such value is marked '# {REVIEW}'. Before sharing the contract with the other nodes: "
    "round numeric ranges outward, fold rare categories into <other> (remove them from the "
    "vocabulary), replace centres, scales and imputation values with values the federation "
    "agrees on, and check the dropped columns and the missing-value policies."
)

_TRUE_WORDS = frozenset({"yes", "y", "true", "t"})
_FALSE_WORDS = frozenset({"no", "n", "false", "f"})


class DraftError(AtollError, ValueError):
    """The file cannot be drafted from as asked (unknown column, no label, ...)."""


@dataclass
class _Column:
    """One drafted feature: its contract fields and a YAML comment per field."""

    fields: dict[str, Any]
    comments: dict[str, str] = field(default_factory=dict)  # field -> comment ("" = none)
    above: list[str] = field(default_factory=list)  # comment lines above the feature


def _stripped(col: pd.Series) -> np.ndarray:
    return col.astype("string").str.strip().fillna("").to_numpy(dtype=object)
