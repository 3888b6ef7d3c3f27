"""Binary-classification metrics, and a ROC AUC that federates.

`binary_metrics` evaluates one node's (or the server's) predictions. For a *global* AUC over all
nodes without pooling any scores, each node sends only histogram counts; the server sums them.
`score_histogram` / `auc_from_histograms` work on exact counts in equal-width probability bins.
What nodes release for DP evaluation is `logit_histogram` (equal-width bins of the output logit,
`logit_bin_edges`) plus Gaussian noise; `common.estimation` turns the pooled noised counts into
nearly unbiased estimates with intervals.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from common.estimation import logit_bin_edges as logit_bin_edges

_EPS = 1e-7


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length ({y.size} vs {p.size})")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("probabilities must be finite and within [0, 1]")
    return y, p


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """roc_auc, pr_auc, log_loss, brier, lift_top_decile, positive_rate, n.

    Metrics undefined for the data (AUCs and lift with one class, anything with no rows) are NaN
    rather than errors: a small node can legitimately hold a single class.
    """
    y, p = _check(y, p)
    n = y.size
    nan = math.nan
    if n == 0:
        keys = ("roc_auc", "pr_auc", "log_loss", "brier", "lift_top_decile", "positive_rate")
        return {**dict.fromkeys(keys, nan), "n": 0.0}
    rate = float(y.mean())
    two_classes = 0.0 < rate < 1.0
    return {
        "roc_auc": float(roc_auc_score(y, p)) if two_classes else nan,
        "pr_auc": float(average_precision_score(y, p)) if two_classes else nan,
        "log_loss": float(log_loss(y, np.clip(p, _EPS, 1 - _EPS), labels=[0.0, 1.0])),
        "brier": float(np.mean((p - y) ** 2)),
        "lift_top_decile": lift_top_decile(y, p),
        "positive_rate": rate,
        "n": float(n),
    }


def lift_top_decile(y: np.ndarray, p: np.ndarray) -> float:
    """Positive rate among the top 10 % scores over the overall rate (NaN with no positives)."""
    y, p = _check(y, p)
    if y.size == 0 or y.sum() == 0:
        return math.nan
    k = max(1, math.ceil(0.1 * y.size))
    top = np.argsort(-p, kind="stable")[:k]
    return float(y[top].mean() / y.mean())


def score_histogram(y: np.ndarray, p: np.ndarray, bins: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Counts of positives and of negatives per equal-width probability bin on [0, 1]."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    y, p = _check(y, p)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    pos = np.bincount(idx[y == 1], minlength=bins).astype(np.int64)
    neg = np.bincount(idx[y == 0], minlength=bins).astype(np.int64)
    return pos, neg


def logit_histogram(y: np.ndarray, z: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of positives and of negatives per logit bin (`logit_bin_edges`); z finite."""
    y = np.asarray(y, dtype=np.float64).ravel()
    z = np.asarray(z, dtype=np.float64).ravel()
    if y.shape != z.shape:
        raise ValueError(f"labels and logits differ in length ({y.size} vs {z.size})")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    idx = np.searchsorted(logit_bin_edges(bins), z, side="right")
    pos = np.bincount(idx[y == 1], minlength=bins).astype(np.int64)
    neg = np.bincount(idx[y != 1], minlength=bins).astype(np.int64)
    return pos, neg


def auc_from_histograms(pos_counts: np.ndarray, neg_counts: np.ndarray) -> float:
    """ROC AUC from (summed) score histograms; pairs in the same bin count as ties (half).

    NaN if there are no positives or no negatives.
    """
    pos = np.asarray(pos_counts, dtype=np.float64).ravel()
    neg = np.asarray(neg_counts, dtype=np.float64).ravel()
    if pos.shape != neg.shape:
        raise ValueError(f"histograms differ in length ({pos.size} vs {neg.size} bins)")
    if (
        (pos < 0).any()
        or (neg < 0).any()
        or not (np.isfinite(pos).all() and np.isfinite(neg).all())
    ):
        raise ValueError("histogram counts must be finite and >= 0 (clip noised counts at 0 first)")
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return math.nan
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def histogram_metrics(pos_counts: np.ndarray, neg_counts: np.ndarray) -> dict[str, float]:
    """Metrics of exact counts in equal-width probability bins, read at bin centres.

    Scores are taken at bin centres, so log loss and Brier are approximations; ROC AUC treats
    pairs within a bin as ties. Noised counts are clipped at 0, which biases every metric (towards
    AUC 0.5): for DP releases use `common.estimation.estimate` instead.
    """
    pos = np.clip(np.asarray(pos_counts, dtype=np.float64), 0, None)
    neg = np.clip(np.asarray(neg_counts, dtype=np.float64), 0, None)
    centres = (np.arange(pos.size) + 0.5) / pos.size
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    n = n_pos + n_neg
    if n == 0:
        return {
            "roc_auc": math.nan,
            "log_loss": math.nan,
            "brier": math.nan,
            "n": 0.0,
            "positives": 0.0,
        }
    c = np.clip(centres, 1e-6, 1 - 1e-6)
    log_loss = float(-(pos * np.log(c) + neg * np.log(1 - c)).sum() / n)
    brier = float((pos * (1 - centres) ** 2 + neg * centres**2).sum() / n)
    return {
        "roc_auc": auc_from_histograms(pos, neg),
        "log_loss": log_loss,
        "brier": brier,
        "n": n,
        "positives": n_pos,
    }
