"""Deterministic train/test split by hashing customer ids.

A customer's side of the split depends only on its id and the salt: the same on every machine and
every run, whatever the row order or which other customers are present. So a node's held-out set
stays held out across rounds and retrainings, and never leaks into training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

DEFAULT_SALT = "atoll-split-v1"


def hash_unit(ids: Iterable[object], salt: str = DEFAULT_SALT) -> np.ndarray:
    """Map each id to a uniform number in [0, 1) via sha256(salt + id)."""
    out = [
        int.from_bytes(hashlib.sha256(f"{salt}{i}".encode()).digest()[:8], "big") / 2.0**64
        for i in ids
    ]
    return np.asarray(out, dtype=np.float64)


def split_mask(
    ids: Iterable[object], test_fraction: float = 0.2, salt: str = DEFAULT_SALT
) -> np.ndarray:
    """Boolean mask, True for ids in the test set (about `test_fraction` of them)."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be within [0, 1], got {test_fraction}")
    return hash_unit(ids, salt) < test_fraction
