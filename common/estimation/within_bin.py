"""The within-bin model: a sub-grid of scores inside each evaluation bin, and the metrics of
(noised) counts under it or under the crude bin-centre version (see the package docstring)."""

from __future__ import annotations

import numpy as np

from common.estimation.logit import logit_bin_edges

SUBGRID = 16  # points per bin of the within-bin model
_LOGIT_CLAMP = 30.0  # the nodes' LOGIT_BOUND: no released score is beyond it


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
