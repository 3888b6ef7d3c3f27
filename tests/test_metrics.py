"""Per-node metrics, and a global ROC AUC computed from pooled histogram counts only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from common.metrics import auc_from_histograms, binary_metrics, lift_top_decile, score_histogram


def scores(n: int, seed: int, separation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(float)
    p = 1.0 / (1.0 + np.exp(-(rng.normal(0, 1, n) + separation * y - 1.0)))
    return y, p


def test_binary_metrics_match_sklearn() -> None:
    y, p = scores(5000, seed=0)
    m = binary_metrics(y, p)
    assert set(m) == {
        "roc_auc",
        "pr_auc",
        "log_loss",
        "brier",
        "lift_top_decile",
        "positive_rate",
        "n",
    }
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert m["log_loss"] == pytest.approx(log_loss(y, p))
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["positive_rate"] == pytest.approx(y.mean()) and m["n"] == 5000
    assert 1.0 < m["lift_top_decile"] < 1.0 / y.mean()


def test_lift_top_decile_on_a_known_ranking() -> None:
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0] * 2, dtype=float)  # 20 rows, 20 % positive
    p = np.where(y == 1, 0.9, 0.1)
    assert lift_top_decile(y, p) == pytest.approx(5.0)  # top 2 rows all positive: 1.0 / 0.2
    assert lift_top_decile(np.zeros(10), np.full(10, 0.5)) != lift_top_decile(y, p)
    assert math.isnan(lift_top_decile(np.zeros(10), np.full(10, 0.5)))


def test_single_class_and_empty_inputs_give_nan_not_errors() -> None:
    m = binary_metrics(np.zeros(50), np.linspace(0, 1, 50))
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"])
    assert math.isfinite(m["log_loss"]) and m["positive_rate"] == 0 and m["n"] == 50
    m = binary_metrics(np.ones(5), np.array([0.0, 1.0, 0.5, 0.2, 0.9]))
    assert math.isnan(m["roc_auc"]) and math.isfinite(m["log_loss"])  # p=0 does not give inf
    empty = binary_metrics(np.array([]), np.array([]))
    assert empty["n"] == 0 and math.isnan(empty["roc_auc"])


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        binary_metrics(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="within"):
        binary_metrics(np.array([0, 1]), np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="0 or 1"):
        binary_metrics(np.array([0, 2]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match=">= 0"):
        auc_from_histograms([1, -1], [1, 1])
    with pytest.raises(ValueError, match="differ in length"):
        auc_from_histograms([1, 1], [1])


def test_histograms_count_every_score_once_including_the_edges() -> None:
    y = np.array([1, 0, 1, 0, 1])
    p = np.array([0.0, 0.0, 1.0, 0.999, 0.5])
    pos, neg = score_histogram(y, p, bins=10)
    assert pos.tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert neg.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    y, p = scores(1000, seed=1)
    pos, neg = score_histogram(y, p)
    assert pos.shape == (200,) and pos.sum() == y.sum() and neg.sum() == (1 - y).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_from_fine_histograms_matches_sklearn(seed: int) -> None:
    y, p = scores(20000, seed=seed, separation=1.0 + seed)
    exact = roc_auc_score(y, p)
    assert abs(auc_from_histograms(*score_histogram(y, p, bins=10000)) - exact) < 0.005
    assert abs(auc_from_histograms(*score_histogram(y, p, bins=200)) - exact) < 0.005


def test_pooled_node_histograms_give_the_global_auc() -> None:
    parts = [scores(3000, seed=s, separation=0.5 + s) for s in range(3)]
    pos = sum(score_histogram(y, p, bins=1000)[0] for y, p in parts)
    neg = sum(score_histogram(y, p, bins=1000)[1] for y, p in parts)
    y_all = np.concatenate([y for y, _ in parts])
    p_all = np.concatenate([p for _, p in parts])
    assert abs(auc_from_histograms(pos, neg) - roc_auc_score(y_all, p_all)) < 0.005


def test_ties_within_a_bin_count_half_and_extremes() -> None:
    assert auc_from_histograms([0, 5, 0], [0, 7, 0]) == pytest.approx(0.5)
    assert auc_from_histograms([0, 0, 4], [3, 0, 0]) == 1.0
    assert auc_from_histograms([4, 0, 0], [0, 0, 3]) == 0.0
    assert math.isnan(auc_from_histograms([0, 0], [1, 2]))
    assert math.isnan(auc_from_histograms([1, 2], [0, 0]))
