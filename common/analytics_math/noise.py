"""ε ↔ σ for one Gaussian release at sampling rate 1: the ledger event (σ, 1.0, 1)."""

from __future__ import annotations

import math


def epsilon_of(sigma: float, delta: float) -> float:
    """ε the ledger charges for one query at noise multiplier σ (min(RDP, PLD) accountant)."""
    from privacy.dp import epsilon

    return epsilon([(sigma, 1.0, 1)], delta)


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def analytic_delta(sigma: float, eps: float) -> float:
    """Exact δ(ε) of a Gaussian mechanism with sensitivity 1 and noise σ (Balle & Wang 2018)."""
    a = 1 / (2 * sigma)
    return _phi(a - eps * sigma) - math.exp(eps) * _phi(-a - eps * sigma)


def sigma_for_epsilon(target: float, delta: float, tolerance: float = 0.002) -> float:
    """Smallest σ (within `tolerance`) whose charged ε is at most `target`: bisection on
    `privacy.dp.epsilon` (monotone in σ), bracketed by the exact analytic Gaussian σ."""
    if not (target > 0 and math.isfinite(target)):
        raise ValueError("target ε must be positive and finite")
    lo, hi = 1e-3, 1e6  # the exact σ: the accountant's ε is never below the exact one
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if analytic_delta(mid, target) > delta:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-9:
            break
    lo = hi * (1 - 1e-6)
    while epsilon_of(hi, delta) > target:
        lo, hi = hi, hi * 1.02
    if epsilon_of(lo, delta) <= target:
        return lo
    for _ in range(40):  # log-bisection: keep epsilon_of(hi) <= target < epsilon_of(lo)
        if epsilon_of(hi, delta) >= target * (1 - tolerance) or hi / lo < 1 + 1e-6:
            break
        mid = math.sqrt(lo * hi)
        if epsilon_of(mid, delta) > target:
            lo = mid
        else:
            hi = mid
    return hi
