"""The estimates: bias-corrected metrics and 95 % intervals by parametric bootstrap over the
known noise, with the binning allowance, and their model-card form."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.estimation.logit import IDENTITY, Affine
from common.estimation.platt import fit_map
from common.estimation.pooling import Pooled
from common.estimation.within_bin import Grid, _bin_terms, _centre_terms, _metrics, _tilts

Z95 = 1.959963984540054
DRAWS = 400  # bootstrap draws per estimate
METRICS: tuple[str, ...] = ("roc_auc", "log_loss", "brier", "calibration_in_the_large")
# valid range of each metric: estimates and intervals are clipped to it
METRIC_RANGE: dict[str, tuple[float, float]] = {
    "roc_auc": (0.0, 1.0),
    "log_loss": (0.0, math.inf),
    "brier": (0.0, 1.0),
    "calibration_in_the_large": (-1.0, 1.0),
}

INTERVAL_COVERS = (
    "Each ci95 is a 95% interval for the metric on the held-out rows the nodes evaluated (their "
    "test split), from the pooled Gaussian-noised score histograms the nodes released on finish: "
    "it covers the DP noise on those histograms (and the fit of the calibration map on the same "
    "release, and the binning), not the sampling of the held-out rows, which are fixed — a "
    "different test set would give a different true value."
)


@dataclass(frozen=True)
class Estimate:
    estimate: float
    ci95: tuple[float, float]
    bias_corrected: float  # subtracted from the plug-in value (bootstrap mean error)
    allowance: float  # discretisation allowance (half the within-bin correction)

    def as_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "ci95": [self.ci95[0], self.ci95[1]],
            "bias_corrected": self.bias_corrected,
            "binning_allowance": self.allowance,
        }


@dataclass(frozen=True)
class Report:
    """Estimates of the published model's metrics, and the map it was published with."""

    metrics: dict[str, Estimate]
    calibration: Affine  # applied to the published logit (identity if not calibrated)
    within_bin: Affine  # the fitted P(positive | raw logit) used inside bins
    examples: float  # noised count of held-out rows
    positives: float
    nodes: int
    noise_sd: float  # per bin, pooled

    def value(self, name: str) -> float:
        return self.metrics[name].estimate


def estimate(
    pooled: Pooled,
    *,
    calibrate: bool = False,
    calibration: Affine | None = None,
    draws: int = DRAWS,
    seed: int = 0,
) -> Report:
    """Estimates and 95 % intervals of the metrics of a model from its pooled noised histograms.

    The model scored is the one that produced the histograms followed by an affine map of its
    logit: fitted here on these histograms (`calibrate`, Platt scaling: then the interval and the
    bias correction include the optimism of fitting and evaluating on the same release), given
    (`calibration`, fitted elsewhere), or none. The bootstrap is the coordinator's own simulation,
    seeded for a reproducible card — it is not DP noise.
    """
    grid = Grid(pooled.bins)
    pos, neg, v = pooled.pos, pooled.neg, pooled.noise_var
    cond = fit_map(pos, neg, v, grid)
    if calibrate:
        pub = cond
    else:
        c = calibration or IDENTITY
        pub = np.array([c.slope, c.intercept], dtype=np.float64)
    tilt = _tilts(pos, neg, grid)
    plug = _metrics(pos, neg, _bin_terms(grid, cond, pub, tilt))
    # other within-bin models the counts cannot rule out: untilted density; a within-bin trend
    # of the share of positives flat or twice as steep (at least 2 per logit unit)
    untilted = _metrics(pos, neg, _bin_terms(grid, cond, pub))
    flat = _metrics(pos, neg, _bin_terms(grid, np.array([0.0, cond[1]]), pub, tilt))
    steep = np.array([2 * max(1.0, cond[0]), cond[1]])
    steeper = _metrics(pos, neg, _bin_terms(grid, steep, pub, tilt))
    crude = _metrics(pos, neg, _centre_terms(grid, pub))
    errors = _bootstrap_errors(pooled, grid, cond, pub, calibrate, draws, seed)
    out: dict[str, Estimate] = {}
    for i, name in enumerate(METRICS):
        shifts = [
            1.5 * abs(plug[i] - untilted[i]),
            0.75 * abs(plug[i] - crude[i]),
            abs(plug[i] - flat[i]),
            abs(plug[i] - steeper[i]),
        ]
        allowance = max(shifts) if all(math.isfinite(x) for x in shifts) else math.nan
        out[name] = _interval(name, float(plug[i]), float(allowance), errors[:, i])
    return Report(
        metrics=out,
        calibration=Affine(float(pub[0]), float(pub[1])),
        within_bin=Affine(float(cond[0]), float(cond[1])),
        examples=float(pos.sum() + neg.sum()),
        positives=float(pos.sum()),
        nodes=pooled.nodes,
        noise_sd=math.sqrt(v),
    )


def _bootstrap_errors(
    pooled: Pooled,
    grid: Grid,
    cond: np.ndarray,
    pub: np.ndarray,
    calibrate: bool,
    draws: int,
    seed: int,
) -> np.ndarray:
    """(draws, 4): estimator minus truth in worlds whose true counts are the observed ones."""
    rng = np.random.default_rng(seed)
    sd = math.sqrt(pooled.noise_var)
    shape = (draws, pooled.bins)
    pos_b = pooled.pos + rng.normal(0.0, sd, shape)
    neg_b = pooled.neg + rng.normal(0.0, sd, shape)
    cond_b = fit_map(pos_b, neg_b, pooled.noise_var, grid)
    pub_b = cond_b if calibrate else np.broadcast_to(pub, cond_b.shape)
    est = _metrics(pos_b, neg_b, _bin_terms(grid, cond_b, pub_b, _tilts(pos_b, neg_b, grid)))
    # the truth of each world: its published map on the observed counts, within-bin model fixed
    fixed = np.broadcast_to(cond, pub_b.shape)
    tilt = _tilts(pooled.pos, pooled.neg, grid)
    truth = _metrics(pooled.pos[None, :], pooled.neg[None, :], _bin_terms(grid, fixed, pub_b, tilt))
    return np.asarray(est - truth)


def _interval(name: str, plug: float, allowance: float, errors: np.ndarray) -> Estimate:
    """Bias-corrected point and interval. If the observed counts define no value (the noise left
    no positives or no negatives) the point is NaN and the interval the metric's whole range: an
    honest "anything in range", never a missing interval.

    If the noise often leaves a simulated world without positives or negatives (more than 5 % of
    the draws: a handful of rows under a large σ), the metric is not estimable to any useful
    precision: the point stays the plug-in value and the interval is the metric's whole range.
    """
    lo_ok, hi_ok = METRIC_RANGE[name]
    clip = lambda x: float(min(max(x, lo_ok), hi_ok))  # noqa: E731
    ok = errors[np.isfinite(errors)]
    if not math.isfinite(plug):
        return Estimate(math.nan, (lo_ok, hi_ok), math.nan, math.nan)
    if ok.size < 0.95 * errors.size or ok.size < 20:
        return Estimate(clip(plug), (lo_ok, hi_ok), 0.0, math.nan)
    bias = float(ok.mean())
    point = plug - bias
    q_lo, q_hi = np.quantile(ok, [0.025, 0.975])
    allowance = allowance if math.isfinite(allowance) else 0.0
    # basic bootstrap around the bias-corrected point, widened for the binning
    below = math.hypot(float(q_hi) - bias, Z95 * allowance)
    above = math.hypot(bias - float(q_lo), Z95 * allowance)
    lo, hi = point - below, point + above
    return Estimate(clip(point), (clip(lo), clip(hi)), bias, allowance)


def report_dict(report: Report) -> dict[str, Any]:
    """The card's form: each metric {estimate, ci95, ...}, plus what the intervals cover."""
    return {
        **{k: e.as_dict() for k, e in report.metrics.items()},
        "interval_covers": INTERVAL_COVERS,
    }
