"""The learning rate of each round: cosine from the run's learning-rate to a fraction of it.

Adam's step moves every weight by about the learning rate whatever the gradient's scale, so under
DP noise the weights keep jittering by ≈ lr around the optimum; decaying lr over the run lets the
last rounds settle. The schedule depends on the run's settings and the round number only (both
public, both admitted), never on data, and it is post-processing of privatised gradients: ε does
not depend on it.
"""

from __future__ import annotations

import math
from dataclasses import replace

from client.training.config import DPTrainConfig


def round_learning_rate(cfg: DPTrainConfig, server_round: int) -> float:
    """lr × (f + (1 − f)·(1 + cos(π·t))/2), t = (round − 1)/(rounds − 1), f = learning_rate_final:
    lr in round 1, lr × f in the last, cosine in between; rounds outside 1..R are clamped."""
    rounds = max(1, int(cfg.total_rounds))
    final = cfg.learning_rate_final
    if not (math.isfinite(final) and 0 < final <= 1):
        raise ValueError(f"learning_rate_final must be in (0, 1], got {final!r}")
    if rounds == 1:
        return cfg.learning_rate
    t = (min(max(int(server_round), 1), rounds) - 1) / (rounds - 1)
    return cfg.learning_rate * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t)))


def for_round(cfg: DPTrainConfig, server_round: int) -> DPTrainConfig:
    """`cfg` with the learning rate of round `server_round` (what `train_dp` applies)."""
    return replace(cfg, learning_rate=round_learning_rate(cfg, server_round))
