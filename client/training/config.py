"""What a run asks of each node's training: `DPTrainConfig` and the update rules it may name."""

from __future__ import annotations

from dataclasses import dataclass

# The update rules a node may apply to its privatised gradient (post-processing: same ε).
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")


@dataclass(frozen=True)
class DPTrainConfig:
    """What a run asks of each node, every field from the run config.

    No defaults on purpose: the run config is the one source of run defaults, and a node that
    filled a gap itself would do something the coordinator did not ask for (and the owner did not
    admit).
    """

    epochs: int
    sample_rate: float  # Poisson sampling rate q: expected batch = q × rows
    learning_rate: float  # the first round's; `round_learning_rate` gives each round's
    learning_rate_final: float  # the last round's, as a fraction of learning_rate
    max_grad_norm: float  # 0: auto, from the node's σ (privacy.dp.clip_norm)
    noise_multiplier: float
    target_epsilon: float  # > 0: derive the noise so the whole run spends at most this
    delta: float
    total_rounds: int  # rounds in the whole run: plans and target ε cover all of them
    eval_noise: float  # σ of the Gaussian noise on evaluation histograms (0: no evaluation)
    eval_bins: int
    proximal_mu: float
    # the update rule applied to the noised gradient: "adam" (bias-corrected moments, carried by
    # the node from round to round of a run: `moments`) or "sgd"; a choice of post-processing,
    # so ε does not depend on it
    optimizer: str
    # σ of the final model's evaluation (on finish); 0: eval_noise (see `final_noise`)
    final_eval_noise: float
    # σ of the drift reference released on finish (all features' histograms, one Gaussian
    # release, purpose analytics/drift); 0: none — admission sets 0 unless the owner allows it
    drift_reference_noise: float
    drift_bins: int  # bins per numeric feature of that reference
