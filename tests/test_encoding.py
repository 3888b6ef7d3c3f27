"""Encoding depends on the contract alone: counted clipping/unknowns/missing, and determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.contract import parse_contract
from common.encoding import OTHER, Encoder


def contract(**overrides):
    features = [
        {"name": "age", "type": "numeric", "min": 20, "max": 70},
        {
            "name": "spend",
            "type": "numeric",
            "min": 0,
            "max": 100,
            "missing": "impute",
            "impute": 50,
        },
        {"name": "plan", "type": "categorical", "vocabulary": ["basic", "pro"]},
        {"name": "region", "type": "categorical", "vocabulary": ["n", "s"], "missing": "reject"},
        {"name": "autopay", "type": "binary", "true_values": ["yes"], "false_values": ["no"]},
        {"name": "app", "type": "binary", "missing": "impute", "impute": True},
    ]
    data = {
        "name": "enc-test",
        "version": 1,
        "task": "churn",
        "label": {"column": "y", "positive": "1"},
        "id": "cid",
        "features": features,
        **overrides,
    }
    return parse_contract(data)


def frame(rows: list[dict]) -> pd.DataFrame:
    base = {
        "age": "45",
        "spend": "10",
        "plan": "basic",
        "region": "n",
        "autopay": "yes",
        "app": "0",
    }
    return pd.DataFrame([{**base, **r} for r in rows], dtype=object)


def col(enc: Encoder, name: str) -> int:
    return enc.columns.index(name)


def test_columns_and_groups_follow_the_contract() -> None:
    enc = Encoder(contract())
    assert enc.columns == [
        "age",
        "spend",
        "plan=basic",
        "plan=pro",
        f"plan={OTHER}",
        "region=n",
        "region=s",
        f"region={OTHER}",
        "autopay",
        "app",
    ]
    assert enc.groups["plan"] == [2, 3, 4] and enc.groups["app"] == [9]
    assert enc.n_features == 10


def test_numeric_scaling_and_clipping_is_counted() -> None:
    enc = Encoder(contract())
    out = enc.encode(
        frame(
            [
                {"age": "20"},
                {"age": "45"},
                {"age": "70"},
                {"age": "5"},
                {"age": "1000"},
                {"age": " 45 "},
            ]
        )
    )
    assert out.keep.all()
    np.testing.assert_allclose(out.x[:, col(enc, "age")], [0, 0.5, 1, 0, 1, 0.5])
    assert out.stats.clipped["age"] == 2
    assert out.x.dtype == np.float32 and out.x.min() >= 0 and out.x.max() <= 1


def test_unknown_category_goes_to_other_and_is_counted() -> None:
    enc = Encoder(contract())
    out = enc.encode(frame([{"plan": "pro"}, {"plan": "gold"}, {"plan": " basic "}]))
    assert out.keep.all()
    plan = out.x[:, enc.groups["plan"]]
    np.testing.assert_array_equal(plan, [[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    assert out.stats.unknown_category["plan"] == 1
    assert (plan.sum(axis=1) == 1).all()  # exactly one hot


def test_strict_categories_reject_unknowns() -> None:
    out = Encoder(contract(), strict_categories=True).encode(frame([{"plan": "gold"}, {}]))
    assert out.keep.tolist() == [False, True]
    assert out.stats.rejected["plan:unknown_category"] == 1
    assert out.row_errors == {0: [("plan", "unknown_category")]}


def test_missing_values_follow_each_features_policy() -> None:
    enc = Encoder(contract())
    rows = [
        {"spend": ""},  # numeric impute -> 50 -> 0.5
        {"spend": None},
        {"age": ""},  # numeric reject
        {"plan": ""},  # categorical other
        {"region": "  "},  # categorical reject (whitespace only is missing)
        {"autopay": ""},  # binary reject
        {"app": np.nan},  # binary impute True
        {},
    ]
    out = enc.encode(frame(rows))
    assert out.keep.tolist() == [True, True, False, True, False, False, True, True]
    assert dict(out.stats.rejected) == {
        "age:missing": 1,
        "region:missing": 1,
        "autopay:missing": 1,
    }
    assert out.stats.missing["spend"] == 2 and out.stats.missing["app"] == 1
    kept = out.x
    assert kept[0, col(enc, "spend")] == pytest.approx(0.5)
    assert kept[1, col(enc, "spend")] == pytest.approx(0.5)
    assert kept[2, col(enc, f"plan={OTHER}")] == 1  # the blank plan row (3rd kept)
    assert kept[3, col(enc, "app")] == 1
    assert out.stats.unknown_category["plan"] == 0  # missing is not "unknown"
    assert out.stats.rows_rejected == 3


def test_nan_inf_and_wrong_types_are_rejected_by_reason() -> None:
    enc = Encoder(contract())
    rows = [
        {"age": "abc"},
        {"age": "inf"},
        {"age": float("-inf")},
        {"age": "nan"},  # the text "nan" is a value, not a blank: not a number
        {"age": float("nan")},  # a real NaN is missing
        {"autopay": "maybe"},
        {"autopay": "YES"},  # binary values are case-sensitive
        {"age": 45, "spend": 10.0},  # typed numbers encode like their text
    ]
    out = enc.encode(frame(rows))
    assert out.keep.tolist() == [False, False, False, False, False, False, False, True]
    assert dict(out.stats.rejected) == {
        "age:not_a_number": 2,
        "age:not_finite": 2,
        "age:missing": 1,
        "autopay:not_binary": 2,
    }
    assert out.row_errors[0] == [("age", "not_a_number")]
    assert out.row_errors[5] == [("autopay", "not_binary")]
    np.testing.assert_array_equal(out.x[0], enc.encode(frame([{}])).x[0])


def test_row_with_several_problems_counts_under_each() -> None:
    out = Encoder(contract()).encode(frame([{"age": "x", "autopay": "?", "region": ""}]))
    assert not out.keep[0]
    assert sorted(r for _, r in out.row_errors[0]) == ["missing", "not_a_number", "not_binary"]
    assert out.stats.rows_rejected == 1 and sum(out.stats.rejected.values()) == 3


def random_rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "cid": [f"c{i}" for i in range(n)],
            "age": rng.choice(["18", "30.5", "69", "99", "", "abc"], n).astype(object),
            "spend": rng.choice(["0", "12.25", "", "150"], n).astype(object),
            "plan": rng.choice(["basic", "pro", "gold", ""], n).astype(object),
            "region": rng.choice(["n", "s"], n).astype(object),
            "autopay": rng.choice(["yes", "no"], n).astype(object),
            "app": rng.choice(["1", "0", ""], n).astype(object),
        }
    )


def test_order_of_rows_does_not_change_any_encoding() -> None:
    enc = Encoder(contract())
    data = random_rows(300, seed=1)
    shuffled = data.sample(frac=1.0, random_state=7)
    a, b = enc.encode(data), enc.encode(shuffled)
    ids_a = data["cid"].to_numpy()[a.keep]
    ids_b = shuffled["cid"].to_numpy()[b.keep]
    by_id = dict(zip(ids_a, a.x, strict=True))
    assert sorted(ids_a) == sorted(ids_b)
    for cid, row in zip(ids_b, b.x, strict=True):
        np.testing.assert_array_equal(row, by_id[cid])
    assert a.stats.rejected == b.stats.rejected and a.stats.clipped == b.stats.clipped


def test_a_row_encodes_the_same_alone_or_in_any_batch() -> None:
    enc = Encoder(contract())
    data = random_rows(60, seed=2)
    batch = enc.encode(data)
    kept_rows = np.flatnonzero(batch.keep)
    for pos, row in zip(kept_rows, batch.x, strict=True):
        alone = enc.encode(data.iloc[[pos]])
        np.testing.assert_array_equal(alone.x[0], row)
    other_batch = pd.concat([random_rows(40, seed=3), data.iloc[[kept_rows[0]]]])
    np.testing.assert_array_equal(enc.encode(other_batch).x[-1], batch.x[0])


def test_encoding_ignores_the_frame_index() -> None:
    enc = Encoder(contract())
    data = random_rows(50, seed=4)
    reindexed = data.set_axis(np.arange(1000, 1050)[::-1])
    np.testing.assert_array_equal(enc.encode(data).x, enc.encode(reindexed).x)


def test_labels_are_one_for_the_positive_value_only() -> None:
    enc = Encoder(contract())
    y = enc.labels(pd.DataFrame({"y": ["1", " 1 ", "0", "", None, "yes"]}, dtype=object))
    assert y.tolist() == [1, 1, 0, 0, 0, 0] and y.dtype == np.float32
