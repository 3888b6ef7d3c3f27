"""Local training with Opacus DP-SGD (Poisson sampling) and local evaluation.

Only called after the node has decided the run is allowed; returns weights and aggregates only.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from common.metrics import histogram_metrics, score_histogram
from common.model import predict_logits
from privacy.dp import PlannedEvent, calibrate_run_noise, plan_run, steps_per_epoch


@dataclass(frozen=True)
class DPTrainConfig:
    """What a run asks of each node (from the run config); the node's ledger decides if it may."""

    epochs: int = 1
    sample_rate: float = 0.02  # Poisson sampling rate q: expected batch = q × rows
    learning_rate: float = 0.5
    max_grad_norm: float = 1.0
    noise_multiplier: float = 1.0
    target_epsilon: float = 0.0  # > 0: derive the noise so the whole run spends at most this
    delta: float = 1e-5
    total_rounds: int = 1  # rounds in the whole run: plans and target ε cover all of them
    eval_noise: float = 10.0  # σ of the Gaussian noise on evaluation histograms (0: no eval)
    eval_bins: int = 20
    proximal_mu: float = 0.0


@dataclass
class TrainResult:
    state: dict[str, torch.Tensor]
    num_examples: int
    train_loss: float
    noise_multiplier: float
    sample_rate: float
    steps: int


def noise_multiplier(cfg: DPTrainConfig) -> float:
    """The training noise: fixed, or calibrated so the whole planned run hits target ε."""
    if cfg.target_epsilon <= 0:
        return cfg.noise_multiplier
    return calibrate_run_noise(
        cfg.target_epsilon,
        cfg.delta,
        sample_rate=cfg.sample_rate,
        rounds=cfg.total_rounds,
        epochs=cfg.epochs,
        eval_noise=cfg.eval_noise,
    )


def plan(cfg: DPTrainConfig) -> list[PlannedEvent]:
    """Every DP release this run will make on a node — computable before any data is read."""
    return plan_run(
        noise_multiplier=noise_multiplier(cfg),
        sample_rate=cfg.sample_rate,
        rounds=cfg.total_rounds,
        epochs=cfg.epochs,
        eval_noise=cfg.eval_noise,
    )


class _Steps(Sampler[list[int]]):
    """A stand-in batch sampler of length k: Opacus derives q = 1/len(loader) from it."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __len__(self) -> int:
        return self.k

    def __iter__(self) -> Iterator[list[int]]:
        return iter([[0]] * self.k)


def train_dp(
    model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: DPTrainConfig, sigma: float
) -> TrainResult:
    """One round of DP-SGD with Poisson sampling at exactly q = 1/k, k = round(1/sample_rate)."""
    n = len(x)
    if n == 0:
        raise ValueError("no training rows")
    # DP noise must be unpredictable to the coordinator: never seed it from the run config.
    torch.manual_seed(secrets.randbits(63))
    k = steps_per_epoch(cfg.sample_rate)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    data = TensorDataset(
        torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
    )
    loader = DataLoader(data, batch_sampler=_Steps(k))  # Opacus replaces the sampler
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
    criterion = nn.BCEWithLogitsLoss()
    model.train()  # Opacus refuses modules in eval mode
    with warnings.catch_warnings():
        # Opacus warns about its non-cryptographic RNG (see README) and torch about hooks
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")  # accounting is the ledger's job, not this one
        dp_model, dp_opt, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=cfg.max_grad_norm,
            poisson_sampling=True,
        )
        losses: list[float] = []
        steps = 0
        dp_model.train()
        for _ in range(cfg.epochs):
            for xb, yb in dp_loader:
                dp_opt.zero_grad()
                out = dp_model(xb).squeeze(-1)
                if len(xb) == 0:  # Poisson drew nobody: still a step (noise only), as accounted
                    loss = out.sum() * 0.0
                else:
                    loss = criterion(out, yb)
                    losses.append(float(loss.detach()))
                loss.backward()
                dp_opt.step()
                steps += 1
                if cfg.proximal_mu > 0:
                    _proximal_step(model, start, cfg.learning_rate * cfg.proximal_mu)
    dp_model.remove_hooks()  # leave `model` a plain module again (reusable)
    (sigma_used, q_used, _steps) = engine.accountant.history[-1] if steps else (sigma, 1 / k, 0)
    return TrainResult(
        state={k_: v.detach().clone() for k_, v in model.state_dict().items()},
        num_examples=n,
        train_loss=float(np.mean(losses)) if losses else math.nan,
        noise_multiplier=float(sigma_used),
        sample_rate=float(q_used),
        steps=steps,
    )


@torch.no_grad()
def _proximal_step(model: nn.Module, anchor: dict[str, torch.Tensor], rate: float) -> None:
    """FedProx pull towards the global model, applied after the private step.

    The exact proximal step of (mu/2)·||w − w_global||² with step size lr: w ← (w + lr·mu·w_g) /
    (1 + lr·mu) — stable for any mu. It does not depend on data, so applying it outside the DP
    optimizer is post-processing and costs no privacy (adding it to the loss would be wiped out
    by Opacus's per-sample clipping anyway).
    """
    for name, p in model.named_parameters():
        p.add_(rate * anchor[name]).div_(1.0 + rate)


def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, noise: float, bins: int
) -> dict[str, float | list[float]]:
    """Release only Gaussian-noised score histograms (L2 sensitivity 1) and what follows from them.

    One customer changes one bin of one histogram by one, so N(0, noise²) per bin is a Gaussian
    mechanism with noise multiplier `noise` — accounted in the ledger like a DP-SGD step at q=1.
    """
    logits = predict_logits(model, x)
    p = 1.0 / (1.0 + np.exp(-logits))
    pos, neg = score_histogram(y, p, bins=bins)
    rng = np.random.default_rng(secrets.randbits(128))  # unpredictable noise, never seeded
    noisy_pos = pos + rng.normal(0, noise, bins) if noise > 0 else pos.astype(float)
    noisy_neg = neg + rng.normal(0, noise, bins) if noise > 0 else neg.astype(float)
    # Histograms leave unclipped so the coordinator's pooled sum stays unbiased;
    # histogram_metrics clips at 0 for this node's own numbers.
    out: dict[str, float | list[float]] = dict(histogram_metrics(noisy_pos, noisy_neg))
    out["hist-pos"] = [float(v) for v in noisy_pos]
    out["hist-neg"] = [float(v) for v in noisy_neg]
    return out
