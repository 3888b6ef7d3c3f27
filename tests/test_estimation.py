"""Estimates and 95 % intervals from DP-noised score histograms: coverage, bias, totality."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from common.estimation import (
    INTERVAL_COVERS,
    METRIC_RANGE,
    METRICS,
    Affine,
    Grid,
    Pooled,
    estimate,
    fit_map,
    pool,
    report_dict,
)
from common.metrics import histogram_metrics, logit_histogram, score_histogram


def _scores(n_pos: int, n_neg: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed held-out set: labels and a miscalibrated model's logits (binormal, overconfident)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    z = 1.6 * np.r_[rng.normal(0.2, 1.2, n_pos), rng.normal(-1.8, 1.2, n_neg)] + 0.7
    return y, z


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _truth(y: np.ndarray, z: np.ndarray, m: Affine) -> dict[str, float]:
    p = _sigmoid(m.slope * z + m.intercept)
    return {
        "roc_auc": float(roc_auc_score(y, z)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15))),
        "brier": float(brier_score_loss(y, p)),
        "calibration_in_the_large": float(p.mean() - y.mean()),
    }


def _releases(
    pos: np.ndarray, neg: np.ndarray, nodes: int, sigma: float, rng: np.random.Generator
) -> Pooled:
    """`nodes` releases whose exact parts sum to (pos, neg), each bin plus N(0, σ²)."""
    bins = pos.size
    parts = [
        (pos / nodes + rng.normal(0, sigma, bins), neg / nodes + rng.normal(0, sigma, bins), sigma)
        for _ in range(nodes)
    ]
    pooled = pool(parts)
    assert pooled is not None
    return pooled


# --- the nominal coverage, on a fixed test set with injected noise ----------------------------

REPEATS = 400


@pytest.mark.parametrize("calibrate", [True, False])
def test_intervals_cover_the_truth_at_the_nominal_rate_and_bias_is_small(calibrate: bool) -> None:
    """400 seeded noise draws on one fixed score distribution (Telco-like: 3 nodes, σ = 5).

    A 95 % interval must cover the true held-out value in 90–99 % of the repeats (binomial sd at
    400 repeats ≈ 1.1 %: the window is ±4 sd, and allows the binning allowance to be somewhat
    conservative); the point estimate's mean error must be small next to its spread (a fifth of
    it; 400 repeats resolve a mean to 0.05 sd).
    """
    y, z = _scores(390, 1080)
    bins, nodes, sigma = 12, 3, 5.0
    pos, neg = logit_histogram(y, z, bins=bins)
    rng = np.random.default_rng(2024)
    covered = dict.fromkeys(METRICS, 0)
    errors: dict[str, list[float]] = {m: [] for m in METRICS}
    for _ in range(REPEATS):
        pooled = _releases(pos.astype(float), neg.astype(float), nodes, sigma, rng)
        rep = estimate(pooled, calibrate=calibrate, draws=200)
        truth = _truth(y, z, rep.calibration)  # the published model's true held-out metrics
        for m in METRICS:
            lo, hi = rep.metrics[m].ci95
            covered[m] += lo <= truth[m] <= hi
            errors[m].append(rep.metrics[m].estimate - truth[m])
    for m in ("roc_auc", "log_loss", "brier"):
        rate = covered[m] / REPEATS
        err = np.asarray(errors[m])
        assert 0.90 <= rate <= 0.99, (m, rate)
        assert abs(err.mean()) < 0.2 * err.std() + 1e-3, (m, err.mean(), err.std())
    assert abs(np.mean(errors["roc_auc"])) < 0.01


def test_the_old_clipped_plug_in_is_biased_and_the_new_estimate_is_not() -> None:
    """The old release (20 probability bins) read with counts clipped at 0 is pulled towards 0.5
    (the bias the issue measured); the logit bins read without clipping are not."""
    y, z = _scores(390, 1080, seed=3)
    old_pos, old_neg = score_histogram(y, _sigmoid(z), bins=20)
    pos, neg = logit_histogram(y, z, bins=12)
    true_auc = roc_auc_score(y, z)
    rng = np.random.default_rng(7)
    old, new = [], []
    for _ in range(60):
        noised = _releases(old_pos.astype(float), old_neg.astype(float), 3, 10.0, rng)
        old.append(histogram_metrics(noised.pos, noised.neg)["roc_auc"] - true_auc)
        pooled = _releases(pos.astype(float), neg.astype(float), 3, 10.0, rng)
        new.append(estimate(pooled, draws=100).value("roc_auc") - true_auc)
    assert np.mean(old) < -0.02  # biased low
    assert abs(np.mean(new)) < 0.01


def test_without_noise_the_estimate_is_the_exact_value_within_its_binning_allowance() -> None:
    y, z = _scores(1000, 4000, seed=5)
    pos, neg = logit_histogram(y, z, bins=12)
    pooled = Pooled(pos=pos.astype(float), neg=neg.astype(float), noise_var=1e-6, nodes=1)
    rep = estimate(pooled, draws=50)
    truth = _truth(y, z, rep.calibration)
    for m in ("roc_auc", "log_loss", "brier"):
        lo, hi = rep.metrics[m].ci95
        assert lo <= truth[m] <= hi, (m, lo, truth[m], hi)
    # the within-bin model recovers most of the tie bias of 12 coarse bins
    tied = Pooled(pos=pos.astype(float), neg=neg.astype(float), noise_var=0.0, nodes=1)
    below = np.cumsum(tied.neg) - tied.neg
    half = (tied.pos * (below + 0.5 * tied.neg)).sum() / (tied.pos.sum() * tied.neg.sum())
    assert abs(rep.value("roc_auc") - truth["roc_auc"]) < 0.4 * abs(half - truth["roc_auc"])
    # without noise the width is the binning allowance alone
    assert rep.metrics["roc_auc"].ci95[1] - rep.metrics["roc_auc"].ci95[0] < 0.05


def test_fit_map_recovers_a_known_logistic_map_from_noised_counts() -> None:
    rng = np.random.default_rng(11)
    z = rng.normal(-1.0, 2.0, 200_000)
    y = (rng.random(z.size) < _sigmoid(0.5 * z - 0.4)).astype(float)  # overconfident by 2×
    pos, neg = logit_histogram(y, z, bins=20)
    grid = Grid(20)
    a, b = fit_map(pos + rng.normal(0, 5, 20), neg + rng.normal(0, 5, 20), 25.0, grid)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-0.4, abs=0.1)
    # vectorised over leading dimensions (bootstrap draws) with the same answer per row
    two_pos, two_neg = np.stack([pos, pos]).astype(float), np.stack([neg, neg]).astype(float)
    rows = fit_map(two_pos, two_neg, 1.0, grid)
    assert rows.shape == (2, 2) and np.allclose(rows[0], rows[1])


# --- the card's form, and totality -------------------------------------------------------------


def test_report_dict_gives_every_metric_an_interval_and_says_what_it_covers() -> None:
    y, z = _scores(200, 600)
    pos, neg = logit_histogram(y, z, bins=12)
    rng = np.random.default_rng(0)
    rep = estimate(_releases(pos.astype(float), neg.astype(float), 2, 5.0, rng))
    card = report_dict(rep)
    for m in METRICS:
        lo, hi = card[m]["ci95"]
        assert lo <= card[m]["estimate"] <= hi
    assert card["interval_covers"] == INTERVAL_COVERS
    assert "held-out rows" in INTERVAL_COVERS and "fixed" in INTERVAL_COVERS
    assert card["roc_auc"]["ci95"][0] >= 0.0 and card["roc_auc"]["ci95"][1] <= 1.0


def test_pool_sums_matching_releases_and_their_noise_variances() -> None:
    pooled = pool([([1, 2], [3, 4], 2.0), ([1, 1], [1, 1], 3.0), ([1, 2, 3], [1, 2, 3], 1.0)])
    assert pooled is not None
    assert pooled.pos.tolist() == [2, 3] and pooled.neg.tolist() == [4, 5]
    assert pooled.noise_var == 13.0 and pooled.nodes == 2  # the 3-bin release cannot be pooled
    assert pool([]) is None
    assert pool([([math.nan], [1.0], 1.0)]) is None


@pytest.mark.parametrize(
    ("pos", "neg"),
    [
        ([0.0] * 12, [50.0] * 12),  # no positives
        ([-3.0] * 12, [-2.0] * 12),  # noise made every count negative
        ([1e9] + [0.0] * 11, [0.0] * 11 + [1e9]),  # extreme
    ],
)
def test_any_noised_counts_give_an_interval_in_range_never_an_error(
    pos: list[float], neg: list[float]
) -> None:
    """Whatever the noise did to the counts, every metric has an interval inside its range (the
    whole range when the counts define no value: then the point is NaN, "not estimable")."""
    rep = estimate(Pooled(np.asarray(pos), np.asarray(neg), 100.0, 1), calibrate=True, draws=50)
    for m in METRICS:
        e, (low, high) = rep.metrics[m], METRIC_RANGE[m]
        assert low <= e.ci95[0] <= e.ci95[1] <= high, (m, e)
        assert math.isnan(e.estimate) or low <= e.estimate <= high, (m, e)
    assert rep.calibration.slope > 0


def test_scores_within_one_bin_give_a_wide_interval_not_a_confident_wrong_one() -> None:
    """A barely trained model: every logit inside one bin, so the histograms cannot show its
    ranking. The interval must say so (wide) and still cover the truth; the calibration fit
    must not flatten the model (its slope is not identified: it stays near the identity)."""
    rng = np.random.default_rng(21)
    z = rng.normal(-0.2, 0.15, 3000)
    y = (rng.random(z.size) < _sigmoid(6.0 * z + 1.0)).astype(float)
    pos, neg = logit_histogram(y, z, bins=12)
    assert (pos + neg).max() >= 0.95 * y.size  # one bin holds (nearly) everything
    truth = roc_auc_score(y, z)
    covered = 0
    for seed in range(20):
        noise = np.random.default_rng(seed)
        pooled = _releases(pos.astype(float), neg.astype(float), 3, 10.0, noise)
        rep = estimate(pooled, calibrate=True, draws=100)
        lo, hi = rep.metrics["roc_auc"].ci95
        covered += lo <= truth <= hi
        assert hi - lo > 0.2
        assert rep.calibration.slope > 0.5
    assert covered >= 19
