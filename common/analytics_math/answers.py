"""The coordinator's post-processing: summed answers → estimates, intervals, reliability."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from common.analytics_math.layout import Layout
from common.analytics_math.query import Z95, Query


def _interval(est: float, var: float) -> tuple[float, float]:
    h = Z95 * math.sqrt(max(var, 0.0))
    return est - h, est + h


def ratio(
    num: float,
    den: float,
    var_num: float,
    var_den: float,
    *,
    offset: float = 0.0,
    clamp: tuple[float, float] | None = None,
) -> tuple[float | None, float | None, float | None]:
    """offset + num/den and its delta-method 95% interval (None if the noisy count is ≤ 0)."""
    if den <= 0:
        return None, None, None
    r = num / den
    h = Z95 * math.sqrt(max(var_num + r**2 * var_den, 0.0)) / den
    est, lo, hi = offset + r, offset + r - h, offset + r + h
    if clamp is not None:
        est, lo, hi = (min(max(v, clamp[0]), clamp[1]) for v in (est, lo, hi))
    return est, lo, hi


def quantiles_of(hist: np.ndarray, edges: np.ndarray, probs: list[float]) -> list[float]:
    """Quantiles of a (noisy) histogram: negative bins count 0, linear within a bin."""
    h = np.clip(np.asarray(hist, dtype=float), 0, None)
    total = h.sum()
    if total <= 0:
        return [float("nan")] * len(probs)
    cum = np.concatenate([[0.0], np.cumsum(h)]) / total
    return [float(np.interp(p, cum, edges)) for p in probs]


def finish(
    query: Query,
    lay: Layout,
    values: np.ndarray,
    variances: np.ndarray,
    *,
    bootstrap: int = 400,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (cell, statistic): estimate, 95% interval, noisy count, reliability.

    `values` and `variances` are the nodes' answers summed, shape [cells, values]."""
    rows: list[dict[str, Any]] = []
    t = query.min_count

    def row(
        key: tuple[str, ...],
        stat: str,
        est: float | None,
        lo: float | None,
        hi: float | None,
        count: float | None,
    ) -> None:
        rows.append(
            {
                "cell": list(key),
                "statistic": stat,
                "estimate": est,
                "low": lo,
                "high": hi,
                "noisy_count": count,
                "unreliable": count is None or count < t,
            }
        )

    rng = np.random.default_rng(seed)  # post-processing of public outputs only
    for i, key in enumerate(lay.keys):
        v, var = values[i], variances[i]
        if query.kind == "count":
            row(key, "count", float(v[0]), *_interval(float(v[0]), float(var[0])), float(v[0]))
        elif query.kind == "sum":
            lo, hi = _interval(float(v[0]), float(var[0]))
            rows.append(
                {
                    "cell": list(key),
                    "statistic": "sum",
                    "estimate": float(v[0]),
                    "low": lo,
                    "high": hi,
                    "noisy_count": None,
                    "unreliable": False,
                }
            )
        elif query.kind == "rate":
            r_est, r_lo, r_hi = ratio(
                float(v[0]), float(v[1]), float(var[0]), float(var[1]), clamp=(0.0, 1.0)
            )
            row(key, "rate", r_est, r_lo, r_hi, float(v[1]))
        elif query.kind == "mean":
            r_est, r_lo, r_hi = ratio(
                float(v[0]),
                float(v[1]),
                float(var[0]),
                float(var[1]),
                offset=lay.center,
                clamp=lay.value_range,
            )
            row(key, "mean", r_est, r_lo, r_hi, float(v[1]))
        elif query.kind == "histogram":
            for j, name in enumerate(lay.value_names):
                row(key, name, float(v[j]), *_interval(float(v[j]), float(var[j])), float(v[j]))
        else:  # quantile
            edges = np.asarray(lay.edges, dtype=float)
            est_q = quantiles_of(v, edges, query.quantiles)
            draws = v + rng.standard_normal((bootstrap, len(v))) * np.sqrt(np.maximum(var, 0))
            boot = np.array([quantiles_of(d, edges, query.quantiles) for d in draws])
            total = float(np.clip(v, 0, None).sum())
            for j, p in enumerate(query.quantiles):
                if math.isnan(est_q[j]):
                    row(key, f"q{p:g}", None, None, None, total)
                    continue
                b = boot[:, j][~np.isnan(boot[:, j])]
                q_lo, q_hi = (
                    _bootstrap_interval(est_q[j], b, lay.value_range) if len(b) else (None, None)
                )
                row(key, f"q{p:g}", est_q[j], q_lo, q_hi, total)
    return rows


def _bootstrap_interval(
    est: float, draws: np.ndarray, value_range: tuple[float, float] | None
) -> tuple[float, float]:
    """95% interval of a quantile: the union of the percentile and the basic (reflected)
    bootstrap intervals. Redrawing around a noisy histogram adds the noise a second time, and
    with it the shift that negative bins clipped to 0 cause; the percentile interval keeps that
    shift and the basic one over-corrects it, so either alone undercovers (bench/analytics.py
    measured 80–91% on the public data sets); their union covers 94–96%."""
    q_lo, q_hi = (float(v) for v in np.percentile(draws, [2.5, 97.5]))
    lo, hi = min(2 * est - q_hi, q_lo), max(2 * est - q_lo, q_hi)
    if value_range is not None:
        lo, hi = max(lo, value_range[0]), min(hi, value_range[1])
    return lo, hi
