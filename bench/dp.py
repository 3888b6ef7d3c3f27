"""One round of a node's local training through the project's own `client.training` code.

The benchmarks call the real `train_dp` exactly as the node runtime does (`client/runtime/
service.py`): a full `DPTrainConfig` (no defaults: every value comes from `common.run_config.
RunConfig`'s defaults unless a benchmark varies it), the training noise σ from
`client.training.noise_multiplier(cfg)` (calibrated per node over the whole planned run when a
target ε is given, noised evaluation releases included, and then raised to the owner's floor as
the runtime does), and `public_rows` = the lower end of the node's public size bucket (the
runtime never lets the update's scale depend on the exact row count). ε is the composition of
every release the node made so far (`privacy.dp.epsilon`, min(RDP, PLD), as the node's ledger).

Unlike the runtime, which draws its generator seeds from the OS, the benchmarks pass a seed
(`generator_seed`) so that a run with the same seeds is a replay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from torch import nn

from atoll.federation import DEFAULT_POLICY
from client import training
from client.runtime.config import bucket_of, parse_bucket
from client.training import DPTrainConfig, Moments, TrainResult, train_dp
from common.run_config import RunConfig
from privacy.dp import describe_clip

# The owner's policy of every node the benchmarks start: its limits set the noise floor applied
# to a calibrated σ, as the node runtime applies it.
NODE_POLICY = DEFAULT_POLICY


def _default(key: str) -> float:
    return float(RunConfig.default(key))


@dataclass(frozen=True)
class LocalHyper:
    """Local-training hyperparameters shared by DP and non-DP runs (run-config defaults)."""

    epochs: int = int(RunConfig.default("local-epochs"))
    sample_rate: float = _default("sample-rate")  # Poisson rate q: expected batch = q × rows
    learning_rate: float = _default("learning-rate")
    learning_rate_final: float = _default("learning-rate-final")  # client.schedule
    max_grad_norm: float = _default("max-grad-norm")
    delta: float = _default("delta")
    # noised evaluation releases per round (0: none — the in-process runs evaluate centrally)
    eval_noise: float = 0.0
    eval_bins: int = int(RunConfig.default("eval-bins"))
    proximal_mu: float = _default("proximal-mu")
    optimizer: str = str(RunConfig.default("optimizer"))  # update rule on the noised gradient

    def describe(self) -> str:
        return (
            f"{self.epochs} local epoch(s), Poisson sample rate {self.sample_rate}, "
            f"{self.optimizer} with learning rate {self.learning_rate}, clipping "
            f"{describe_clip(self.max_grad_norm)}, δ {self.delta}"
        )


def make_config(
    hyper: LocalHyper,
    *,
    target_epsilon: float = 0.0,
    noise_multiplier: float | None = None,
    total_rounds: int = 1,
    epochs: int | None = None,
) -> DPTrainConfig:
    """The full `DPTrainConfig` a node builds from the run's settings (see admission.py)."""
    return DPTrainConfig(
        epochs=hyper.epochs if epochs is None else epochs,
        sample_rate=hyper.sample_rate,
        learning_rate=hyper.learning_rate,
        learning_rate_final=hyper.learning_rate_final,
        max_grad_norm=hyper.max_grad_norm,
        noise_multiplier=(
            _default("noise-multiplier") if noise_multiplier is None else noise_multiplier
        ),
        target_epsilon=target_epsilon,
        delta=hyper.delta,
        total_rounds=total_rounds,
        eval_noise=hyper.eval_noise,
        eval_bins=hyper.eval_bins,
        proximal_mu=hyper.proximal_mu,
        optimizer=hyper.optimizer,
        final_eval_noise=0.0,
        drift_reference_noise=0.0,
        drift_bins=0,
    )


def plain_batch_size(cfg: DPTrainConfig, n_rows: int) -> int:
    """The non-private batch size matching a config: the DP run's expected batch."""
    return max(1, round(float(cfg.sample_rate) * n_rows))


def public_rows(n_rows: int) -> int:
    """What the runtime passes as `public_rows`: the lower end of the node's size bucket."""
    return parse_bucket(bucket_of(n_rows))[0]


@lru_cache(maxsize=256)
def node_noise(cfg: DPTrainConfig) -> float:
    """The σ a node trains with: `client.training.noise_multiplier(cfg)`, floored like the runtime.

    Cached: it depends on the config alone and its calibration takes seconds.
    """
    sigma = float(training.noise_multiplier(cfg))
    if cfg.target_epsilon > 0:  # calibrated: never below the owner's floor (service._admit)
        sigma = max(sigma, NODE_POLICY.limits.min_noise_multiplier)
    return sigma


def train_round_dp(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: DPTrainConfig,
    seed: int | None,
    moments: Moments | None = None,
) -> TrainResult:
    """One round of DP-SGD in place, exactly as the node runtime calls `train_dp` (`moments`:
    the node's update-rule state from its previous round of the run)."""
    return train_dp(
        model,
        x,
        y,
        cfg,
        node_noise(cfg),
        generator_seed=seed,
        public_rows=public_rows(len(x)),
        moments=moments,
    )


@dataclass
class NodeAccount:
    """One node's DP state across the rounds of a run (what the node's ledger keeps)."""

    history: list[tuple[float, float, int]] = field(default_factory=list)
    epsilon: float = 0.0
    noise_multiplier: float = 0.0
    steps: int = 0
    moments: Moments | None = None  # the update rule's state (the runtime's MomentStore)

    def train_round(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        cfg: DPTrainConfig,
        seed: int | None = None,
    ) -> float:
        """One round of DP-SGD in place with the node's code; returns ε spent so far."""
        from privacy.dp import epsilon

        result = train_round_dp(model, x, y, cfg, seed, self.moments)
        self.moments = result.moments
        self.history.append((result.noise_multiplier, result.sample_rate, result.steps))
        if cfg.eval_noise > 0:  # the node also releases one noised evaluation per round
            self.history.append((cfg.eval_noise, 1.0, 1))
        self.epsilon = epsilon(self.history, cfg.delta)
        self.noise_multiplier = float(result.noise_multiplier)
        self.steps += int(result.steps)
        return self.epsilon
