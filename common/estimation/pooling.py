"""The nodes' releases summed: pooled noised histograms and the variance of their noise."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


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
