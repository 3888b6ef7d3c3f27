"""Nearly unbiased estimates, with 95 % intervals, of held-out metrics from DP-noised histograms.

What the nodes release about a model is, per node, two score histograms (positives, negatives) on
`bins` fixed bins of the output logit (`common.metrics.logit_histogram`), each bin plus N(0, σ²)
noise. The coordinator pools them: the pooled counts are the true held-out counts plus
Gaussian noise of known variance v = Σ_nodes σ² per bin. Everything here is post-processing of
those releases (no ε).

Why not the old plug-in (clip the noised counts at 0, then compute AUC / log loss): clipping adds
≈ 0.4 σ√k to every empty bin of both histograms — spurious pairs that pull AUC towards 0.5 and log
loss up (0.02–0.10 AUC too low in practice). Here:

1. Counts are used **unclipped**: every metric is a ratio of sums that are linear (log loss, Brier,
   calibration) or bilinear in independent noises (AUC's numerator Σ_{i>j} P_i N_j), so numerators
   and denominators are unbiased; the remaining ratio bias is second order and is removed by the
   bootstrap below.
2. **Within-bin model.** A bin holds scores from a whole range; ties (AUC) and bin-centre losses
   are a discretisation error that does not shrink with more data. Within each bin the score
   density is taken uniform (`Grid`) and the share of positives follows a fitted logistic map of
   the raw logit, q(z) = σ(a·z + b) (`fit_map`: the same Platt fit that calibrates the
   published model). AUC counts a within-bin pair by that model instead of ½; losses are averaged
   over the bin instead of read at its centre.
3. **Parametric bootstrap.** The noise distribution is known exactly, so the estimator's error is
   simulated: redraw the noise around the observed counts, refit everything that is fitted
   (including the calibration map when the published model is calibrated on these same
   histograms — that is the "optimism" of fitting and reporting on one release), and compare with
   the same published map on the observed counts. The mean error is subtracted (bias
   correction) and its 2.5 / 97.5 % quantiles give the interval (basic bootstrap).
4. **Discretisation allowance.** The within-bin density is tilted by the slope of the log counts
   of the neighbouring bins. What the within-bin model may get wrong is taken as the largest shift
   of the number under models the counts cannot rule out — a share of positives flat within each
   bin, or twice as steep (at least 2 per logit unit) — or 1.5 × the shift to an untilted
   density, or 0.75 × the shift from the crude bin-centre value; it is added as a 1.96-sd term
   in quadrature to each side of the interval. When a model's scores all fall in one or two
   bins the histograms say little about its ranking, and this allowance makes the AUC interval
   say so.

The interval covers the DP noise on the held-out rows' histograms; the held-out rows themselves are
fixed (a different test set would give a different true value — that sampling error is not in
the interval). Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Z95 = 1.959963984540054
SUBGRID = 16  # points per bin of the within-bin model
DRAWS = 400  # bootstrap draws per estimate
METRICS: tuple[str, ...] = ("roc_auc", "log_loss", "brier", "calibration_in_the_large")
# valid range of each metric: estimates and intervals are clipped to it
METRIC_RANGE: dict[str, tuple[float, float]] = {
    "roc_auc": (0.0, 1.0),
    "log_loss": (0.0, math.inf),
    "brier": (0.0, 1.0),
    "calibration_in_the_large": (-1.0, 1.0),
}
_LOGIT_CLAMP = 30.0  # the nodes' LOGIT_BOUND: no released score is beyond it
_PRIOR = 1.0  # weight (in χ² units) pulling an uninformed map towards the identity

INTERVAL_COVERS = (
    "Each ci95 is a 95% interval for the metric on the held-out rows the nodes evaluated (their "
    "test split), from the pooled Gaussian-noised score histograms the nodes released on finish: "
    "it covers the DP noise on those histograms (and the fit of the calibration map on the same "
    "release, and the binning), not the sampling of the held-out rows, which are fixed — a "
    "different test set would give a different true value."
)


@dataclass(frozen=True)
class Pooled:
    """Pooled noised histograms and the per-bin variance of their noise."""

    pos: np.ndarray
    neg: np.ndarray
    noise_var: float  # Σ over the contributing nodes of σ² (each bin of each histogram)
    nodes: int

    @property
    def bins(self) -> int:
        return int(self.pos.size)


def pool(releases: Iterable[tuple[Sequence[float], Sequence[float], float]]) -> Pooled | None:
    """Sum (hist_pos, hist_neg, σ) releases of equal length; None if there are none usable."""
    pos: np.ndarray | None = None
    neg: np.ndarray | None = None
    var, nodes = 0.0, 0
    for hp, hn, sigma in releases:
        p = np.asarray(hp, dtype=np.float64).ravel()
        n = np.asarray(hn, dtype=np.float64).ravel()
        if p.size == 0 or p.shape != n.shape or not (np.isfinite(p).all() and np.isfinite(n).all()):
            continue
        if not (math.isfinite(sigma) and sigma >= 0):
            continue
        if pos is None or neg is None:
            pos, neg = p.copy(), n.copy()
        elif pos.shape != p.shape:
            continue  # another binning: cannot be pooled with the first
        else:
            pos, neg = pos + p, neg + n
        var += float(sigma) ** 2
        nodes += 1
    if pos is None or neg is None:
        return None
    return Pooled(pos=pos, neg=neg, noise_var=var, nodes=nodes)


# ---- the bins the nodes release ------------------------------------------------------------

# `bins` − 2 equal-width bins of the output logit over [LOW, HIGH] and one open bin on each side.
# The range holds calibrated scores of positive rates from ~0.03 % to ~98 % with room for a
# miscalibrated model; it is fixed (never from data), so a bin says nothing beyond its count.
LOGIT_BIN_LOW, LOGIT_BIN_HIGH = -8.0, 4.0


def logit_bin_edges(bins: int) -> np.ndarray:
    """The bins − 1 inner edges (logits) of the evaluation histograms' bins."""
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    return np.linspace(LOGIT_BIN_LOW, LOGIT_BIN_HIGH, bins - 1)


# ---- the affine map of the output logit ------------------------------------------------------


@dataclass(frozen=True)
class Affine:
    """z ↦ slope·z + intercept on the model's output logit (slope > 0 keeps the ranking)."""

    slope: float = 1.0
    intercept: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"slope": float(self.slope), "intercept": float(self.intercept)}


IDENTITY = Affine()


# ---- the within-bin model -------------------------------------------------------------------


class Grid:
    """Raw logits of a sub-grid of each evaluation bin (bins × SUBGRID): the within-bin model.

    The bins are `common.metrics.logit_bin_edges(bins)`: inner bins are equal-width in the logit
    and their sub-grid is uniform in it; the two open outer bins reach the nodes' logit bound
    (±30) and are taken uniform in probability, which puts their mass next to the finite edge
    (where a decaying score density has it).
    """

    def __init__(self, bins: int) -> None:
        edges = logit_bin_edges(bins)
        lo = np.r_[-_LOGIT_CLAMP, edges]
        hi = np.r_[edges, _LOGIT_CLAMP]
        u = (np.arange(SUBGRID) + 0.5) / SUBGRID
        z_uniform = lo[:, None] + (hi - lo)[:, None] * u
        p_lo, p_hi = _sigmoid(lo), _sigmoid(hi)
        p = p_lo[:, None] + (p_hi - p_lo)[:, None] * u
        z_outer = np.log(p) - np.log1p(-p)
        outer = np.zeros(bins, dtype=bool)
        outer[[0, -1]] = True
        self.bins = bins
        self.z = np.where(outer[:, None], z_outer, z_uniform)
        self.z_centre = self.z.mean(axis=1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _tilts(pos: np.ndarray, neg: np.ndarray, grid: Grid) -> np.ndarray:
    """Per-bin slope of the log score density, from the neighbouring bins' totals (..., bins).

    Inner bins only (the open outer bins keep their uniform-in-probability shape); totals are
    floored at 1 so a noised count cannot make a log undefined; slopes are kept in [−2, 2] per
    logit unit.
    """
    total = np.log(np.maximum(pos + neg, 1.0))
    mid = grid.z.mean(axis=1)
    tilt = np.zeros(total.shape)
    inner = np.arange(1, grid.bins - 1)
    if inner.size:
        left = np.maximum(inner - 1, 1)
        right = np.minimum(inner + 1, grid.bins - 2)
        span = np.where(right > left, mid[right] - mid[left], 1.0)
        slope = (total[..., right] - total[..., left]) / span
        tilt[..., inner] = np.where(right > left, np.clip(slope, -2.0, 2.0), 0.0)
    return tilt


def _bin_terms(
    grid: Grid, cond: np.ndarray, pub: np.ndarray, tilt: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per-bin expectations for positives and negatives under the within-bin model.

    `cond` and `pub` are (..., 2) arrays of (slope, intercept): the within-bin share of positives
    q = σ(cond(z)) and the published probability g = σ(pub(z)). The score density inside a bin is
    its sub-grid's (`Grid`) tilted by exp(tilt·(z − bin middle)) (`_tilts`; None: untilted).
    Returns arrays (..., bins).
    """
    z = grid.z
    ca, cb = cond[..., 0, None, None], cond[..., 1, None, None]
    pa, pb = pub[..., 0, None, None], pub[..., 1, None, None]
    q = _sigmoid(ca * z + cb)
    if tilt is None:
        dens = np.ones(z.shape)
    else:
        dens = np.exp(tilt[..., None] * (z - z.mean(axis=1, keepdims=True)))
    wp = dens * q
    wn = dens * (1 - q)
    wp = wp / np.maximum(wp.sum(-1, keepdims=True), 1e-300)
    wn = wn / np.maximum(wn.sum(-1, keepdims=True), 1e-300)
    t = pa * z + pb
    g = _sigmoid(t)
    cum_n = np.cumsum(wn, axis=-1) - wn
    return {
        "lp": (wp * -_log_sigmoid(t)).sum(-1),
        "ln": (wn * -_log_sigmoid(-t)).sum(-1),
        "bp": (wp * (1 - g) ** 2).sum(-1),
        "bn": (wn * g**2).sum(-1),
        "mp": (wp * g).sum(-1),
        "mn": (wn * g).sum(-1),
        "tie": (wp * (cum_n + 0.5 * wn)).sum(-1),  # within-bin P(score+ > score−), ties ½
    }


def _centre_terms(grid: Grid, pub: np.ndarray) -> dict[str, np.ndarray]:
    """The crude version: every score at its bin's centre, within-bin pairs tied."""
    t = pub[..., 0, None] * grid.z_centre + pub[..., 1, None]
    g = _sigmoid(t)
    half = np.full(t.shape, 0.5)
    return {
        "lp": -_log_sigmoid(t),
        "ln": -_log_sigmoid(-t),
        "bp": (1 - g) ** 2,
        "bn": g**2,
        "mp": g,
        "mn": g,
        "tie": half,
    }


def _metrics(pos: np.ndarray, neg: np.ndarray, terms: dict[str, np.ndarray]) -> np.ndarray:
    """(..., 4) metrics of counts (..., bins) under per-bin terms; NaN where undefined."""
    n_pos, n_neg = pos.sum(-1), neg.sum(-1)
    n = n_pos + n_neg
    below = np.cumsum(neg, axis=-1) - neg
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((pos * below).sum(-1) + (pos * neg * terms["tie"]).sum(-1)) / (n_pos * n_neg)
        ll = ((pos * terms["lp"]).sum(-1) + (neg * terms["ln"]).sum(-1)) / n
        brier = ((pos * terms["bp"]).sum(-1) + (neg * terms["bn"]).sum(-1)) / n
        citl = ((pos * terms["mp"]).sum(-1) + (neg * terms["mn"]).sum(-1) - n_pos) / n
    out = np.stack(np.broadcast_arrays(auc, ll, brier, citl), axis=-1)
    ok = (n_pos > 0) & (n_neg > 0)
    return np.where(ok[..., None], out, np.nan)


# ---- fitting the logistic map (Platt) on noised counts ---------------------------------------


def fit_map(
    pos: np.ndarray, neg: np.ndarray, noise_var: float, grid: Grid, iters: int = 25
) -> np.ndarray:
    """(slope, intercept) of P(positive | raw logit z) = σ(slope·z + intercept), per count row.

    Works on noised, unclipped counts (`pos`, `neg`: (..., bins)). Estimating equation: in each bin
    the residual r = P − (P + N)·q̄(θ) has mean 0 at the true map whatever the bin's size (an empty
    bin has r = pure noise), so Σ J·r / V = 0 is unbiased; V = (P + N)⁺ q̄(1 − q̄) + v((1 − q̄)² +
    q̄²) is r's variance (sampling + DP noise). The leverage J counts only bins whose total is
    clearly above the noise, so empty bins (pure noise) cannot steer the slope; with all rows in
    one bin the slope is not identified and the pull towards the identity keeps it. Solved by
    damped Gauss–Newton with weights refreshed each step, slope kept in [0.02, 50] (never
    reverses the ranking), intercept in [−30, 30]. Vectorised over leading dimensions (bootstrap
    draws).
    """
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    lead = pos.shape[:-1]
    theta = np.zeros((*lead, 2))
    theta[..., 0] = 1.0
    total = pos + neg
    # leverage only from bins that clearly hold rows (3 sd of the noise on P + N above 0): an empty
    # bin's noised total would otherwise lend its noise leverage over the slope
    held = np.where(total > 3.0 * math.sqrt(2.0 * noise_var), total, 0.0)
    z = grid.z
    for _ in range(iters):
        a, b = theta[..., 0, None, None], theta[..., 1, None, None]
        q = _sigmoid(a * z + b)
        qbar = q.mean(-1)
        dq = q * (1 - q)
        da = -(held * (dq * z).mean(-1))
        db = -(held * dq.mean(-1))
        r = pos - total * qbar
        var = np.maximum(total, 0.0) * qbar * (1 - qbar) + noise_var * ((1 - qbar) ** 2 + qbar**2)
        w = 1.0 / np.maximum(var, 1e-9)
        # normal equations of Σ w r² + PRIOR·((a − 1)² + b²), Gauss–Newton
        haa = (w * da * da).sum(-1) + _PRIOR
        hab = (w * da * db).sum(-1)
        hbb = (w * db * db).sum(-1) + _PRIOR
        ga = (w * da * r).sum(-1) + _PRIOR * (theta[..., 0] - 1.0)
        gb = (w * db * r).sum(-1) + _PRIOR * theta[..., 1]
        det = haa * hbb - hab * hab
        det = np.where(np.abs(det) < 1e-12, 1e-12, det)
        step_a = (hbb * ga - hab * gb) / det
        step_b = (haa * gb - hab * ga) / det
        step = np.stack([step_a, step_b], axis=-1)
        # damping: no more than a factor e in slope and 4 logits in intercept per step
        rel_a = np.abs(step_a) / np.maximum(theta[..., 0], 1e-3)
        scale = np.maximum(1.0, np.maximum(rel_a, np.abs(step_b) / 4.0))
        theta = theta - step / scale[..., None]
        theta[..., 0] = np.clip(np.nan_to_num(theta[..., 0], nan=1.0), 0.02, 50.0)
        theta[..., 1] = np.clip(np.nan_to_num(theta[..., 1], nan=0.0), -30.0, 30.0)
    return theta


# ---- the estimates ---------------------------------------------------------------------------


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
