"""Fitting the logistic map (Platt) of the raw output logit on noised, unclipped counts."""

from __future__ import annotations

import math

import numpy as np

from common.estimation.within_bin import Grid, _sigmoid

_PRIOR = 1.0  # weight (in χ² units) pulling an uninformed map towards the identity


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
