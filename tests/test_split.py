"""The train/test split depends only on each id (and the salt): stable everywhere."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from client.split import DEFAULT_SALT, hash_unit, split_mask

IDS = np.array([f"cust-{i:05d}" for i in range(20000)], dtype=object)


def test_hash_unit_is_sha256_of_salt_and_id() -> None:
    digest = hashlib.sha256(b"atoll-split-v1" + b"7590-VHVEG").digest()
    expected = int.from_bytes(digest[:8], "big") / 2.0**64
    assert hash_unit(["7590-VHVEG"])[0] == expected
    assert DEFAULT_SALT == "atoll-split-v1"


def test_fraction_is_respected() -> None:
    is_test = split_mask(IDS, test_fraction=0.2)
    assert is_test.dtype == bool and is_test.shape == IDS.shape
    assert abs(is_test.mean() - 0.2) < 0.015
    assert abs(split_mask(IDS, test_fraction=0.5).mean() - 0.5) < 0.015


def test_same_answer_every_call_and_independent_of_order_and_neighbours() -> None:
    first = split_mask(IDS)
    assert np.array_equal(first, split_mask(list(IDS)))
    perm = np.random.default_rng(0).permutation(len(IDS))
    assert np.array_equal(split_mask(IDS[perm]), first[perm])
    subset = IDS[::7]
    assert np.array_equal(split_mask(subset), first[::7])


def test_test_set_grows_monotonically_with_the_fraction() -> None:
    small, large = split_mask(IDS, 0.1), split_mask(IDS, 0.3)
    assert not (small & ~large).any()  # every 10 % test id is also in the 30 % test set


def test_salt_changes_the_assignment() -> None:
    a, b = split_mask(IDS), split_mask(IDS, salt="other-salt")
    assert 0.2 < (a != b).mean() < 0.4


def test_edge_fractions_and_bad_input() -> None:
    assert not split_mask(IDS, 0.0).any()
    assert split_mask(IDS, 1.0).all()
    assert split_mask([], 0.2).shape == (0,)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="test_fraction"):
            split_mask(IDS, bad)
