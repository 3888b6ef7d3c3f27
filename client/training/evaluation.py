"""DP evaluation: a model's score histograms on the node's held-out rows, Gaussian-noised.

Like training (`client.training.dp_sgd`), a total function of the coordinator's weights: for
every weight vector (NaN, ±inf, huge) and every data set (zero rows included) `evaluate` returns
normally, with two finite histograms whose length never depends on the data. What leaves is only
the DP release itself (`EvalRelease`).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np
from torch import nn

from client.training.config import DPTrainConfig
from client.training.dp_sgd import LOGIT_BOUND
from common.metrics import logit_histogram
from common.model import predict_logits


def final_noise(cfg: DPTrainConfig) -> float:
    """σ of the final model's evaluation: `final_eval_noise` if set, else `eval_noise`."""
    return cfg.final_eval_noise if cfg.final_eval_noise > 0 else cfg.eval_noise


@dataclass(frozen=True)
class EvalRelease:
    """All an evaluation releases: score histograms of positives and negatives, each noised.

    Left unclipped (noise can make a bin negative) so the coordinator's pooled sum stays
    unbiased; AUC, log loss and the like are the coordinator's post-processing of the pooled sums.
    """

    hist_pos: list[float]
    hist_neg: list[float]


def evaluate(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    noise: float,
    bins: int,
    *,
    rng: np.random.Generator | None = None,
) -> EvalRelease:
    """Release only Gaussian-noised score histograms (L2 sensitivity 1).

    The bins are the model's output logit in `common.metrics.logit_bin_edges(bins)` (fixed
    equal-width bins, never from data). One customer changes one bin of one histogram by one, so
    N(0, noise²) per bin is a Gaussian mechanism with noise multiplier `noise` — accounted in the
    ledger like a DP-SGD step at q=1.
    Any weights and any rows (none included) give two finite histograms of `bins` bins. `rng`
    is for tests; by default the noise comes from the OS, never from anything the coordinator
    sends.
    """
    if not (math.isfinite(noise) and noise > 0):
        raise ValueError(f"evaluation noise must be finite and > 0, got {noise!r}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    gen = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    z = _bounded(predict_logits(model, x))
    # labels were validated on load; binarising keeps this total whatever they hold
    labels = (np.asarray(y, dtype=np.float64).reshape(-1) >= 0.5).astype(np.float64)
    pos, neg = logit_histogram(labels, z, bins=bins)
    return EvalRelease(
        hist_pos=[float(v) for v in pos + gen.normal(0.0, noise, bins)],
        hist_neg=[float(v) for v in neg + gen.normal(0.0, noise, bins)],
    )


def _bounded(logits: np.ndarray) -> np.ndarray:
    """Logits in [-LOGIT_BOUND, LOGIT_BOUND]: a NaN logit scores 0 (p = 0.5), ±inf the bound."""
    z = np.nan_to_num(np.asarray(logits, dtype=np.float64).reshape(-1), nan=0.0)
    return np.clip(z, -LOGIT_BOUND, LOGIT_BOUND)
