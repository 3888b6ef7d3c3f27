"""One round of a node's local training through the project's own `client.training` code.

The training API is evolving (batch size → Poisson sample rate, accounting moving to the node's
ledger); this adapter detects which one is installed so the benchmarks always call the real
`train_dp` rather than a copy:

- "history" API: `DPTrainConfig(batch_size=...)`, `train_dp(model, x, y, cfg, history)` returns
  the run's history and ε (noise calibrated with `noise_for`);
- "ledger" API: `DPTrainConfig(sample_rate=...)`, `train_dp(model, x, y, cfg, sigma)` with
  `sigma = noise_multiplier(cfg)` (calibrated over the whole planned run, noised evaluation
  releases included); ε is the composition of every release the node made so far.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any

import numpy as np
from torch import nn

from client import training
from client.training import DPTrainConfig, train_dp

_FIELDS = {f.name for f in fields(DPTrainConfig)}
API = "ledger" if "sample_rate" in _FIELDS else "history"


@dataclass(frozen=True)
class LocalHyper:
    """Local-training hyperparameters shared by DP and non-DP runs."""

    epochs: int = 1
    batch_size: int = 64  # history API
    sample_rate: float = 0.02  # ledger API (expected batch = q × rows)
    learning_rate: float = 0.5
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    eval_noise: float = 0.0  # ledger API: noised evaluation releases per round (0: none)

    def describe(self) -> str:
        batching = (
            f"Poisson sample rate {self.sample_rate}"
            if API == "ledger"
            else f"batch {self.batch_size} (Poisson, q = batch/rows)"
        )
        return (
            f"{self.epochs} local epoch(s), {batching}, learning rate {self.learning_rate}, "
            f"clipping {self.max_grad_norm}, δ {self.delta}"
        )


def make_config(
    hyper: LocalHyper,
    *,
    target_epsilon: float = 0.0,
    noise_multiplier: float = 1.0,
    total_rounds: int = 1,
    seed: int = 0,
    epochs: int | None = None,
) -> DPTrainConfig:
    """A DPTrainConfig for whichever training API is installed."""
    kwargs: dict[str, Any] = {
        "epochs": hyper.epochs if epochs is None else epochs,
        "learning_rate": hyper.learning_rate,
        "max_grad_norm": hyper.max_grad_norm,
        "noise_multiplier": noise_multiplier,
        "target_epsilon": target_epsilon,
        "delta": hyper.delta,
        "total_rounds": total_rounds,
        "seed": seed,
        "eval_noise": hyper.eval_noise,
    }
    if "sample_rate" in _FIELDS:
        kwargs["sample_rate"] = hyper.sample_rate
    if "batch_size" in _FIELDS:
        kwargs["batch_size"] = hyper.batch_size
    return DPTrainConfig(**{k: v for k, v in kwargs.items() if k in _FIELDS})


def plain_batch_size(cfg: DPTrainConfig, n_rows: int) -> int:
    """The non-private batch size matching a config: the DP run's expected batch."""
    if hasattr(cfg, "batch_size"):
        return int(cfg.batch_size)
    return max(1, round(float(cfg.sample_rate) * n_rows))


_train_dp_any: Any = train_dp  # called with whichever signature the installed API has


@lru_cache(maxsize=256)
def _calibrated(cfg: DPTrainConfig) -> float:
    return float(training.noise_multiplier(cfg))


def node_noise(cfg: DPTrainConfig) -> float:
    """`client.training.noise_multiplier(cfg)`, cached: it depends on the config alone and its
    calibration takes seconds (the seed, if any, does not enter it)."""
    key = replace(cfg, **{"seed": 0}) if "seed" in _FIELDS else cfg
    return _calibrated(key)


@dataclass
class NodeAccount:
    """One node's DP state across the rounds of a run (what the node keeps between rounds)."""

    history: list[tuple[float, float, int]] = field(default_factory=list)
    epsilon: float = 0.0
    noise_multiplier: float = 0.0
    steps: int = 0

    def train_round(
        self, model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: DPTrainConfig
    ) -> float:
        """One round of DP-SGD in place with the node's code; returns ε spent so far."""
        params = inspect.signature(train_dp).parameters
        result: Any
        if "history" in params:
            result = _train_dp_any(model, x, y, cfg, history=self.history)
            self.history = list(result.history)
            self.epsilon = float(result.epsilon)
        else:
            from privacy.dp import epsilon

            sigma = node_noise(cfg)
            result = train_dp(model, x, y, cfg, sigma)
            self.history.append((result.noise_multiplier, result.sample_rate, result.steps))
            eval_noise = float(getattr(cfg, "eval_noise", 0.0))
            if eval_noise > 0:  # the node also releases one noised evaluation per round
                self.history.append((eval_noise, 1.0, 1))
            self.epsilon = epsilon(self.history, cfg.delta)
        self.noise_multiplier = float(result.noise_multiplier)
        self.steps += int(result.steps)
        return self.epsilon
