"""The model's output logit as the coordinator sees it: the fixed bins the nodes release its
histograms on, and affine maps of it (the published calibration)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# `bins` − 2 equal-width bins of the output logit over [LOW, HIGH] and one open bin on each side.
# The range holds calibrated scores of positive rates from ~0.03 % to ~98 % with room for a
# miscalibrated model; it is fixed (never from data), so a bin says nothing beyond its count.
LOGIT_BIN_LOW, LOGIT_BIN_HIGH = -8.0, 4.0


def logit_bin_edges(bins: int) -> np.ndarray:
    """The bins − 1 inner edges (logits) of the evaluation histograms' bins."""
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    return np.linspace(LOGIT_BIN_LOW, LOGIT_BIN_HIGH, bins - 1)


@dataclass(frozen=True)
class Affine:
    """z ↦ slope·z + intercept on the model's output logit (slope > 0 keeps the ranking)."""

    slope: float = 1.0
    intercept: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"slope": float(self.slope), "intercept": float(self.intercept)}


IDENTITY = Affine()
