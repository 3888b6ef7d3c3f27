"""Local training with DP-SGD (Opacus per-sample gradients, Poisson sampling): one round.

`train_dp` is a total function of the coordinator's weights: for every weight vector (NaN, ±inf,
huge) and every data set (zero rows included) it returns normally, with finite values whose form
— tensor names and shapes, step count — never depends on the data. Otherwise an exception or a
NaN would be a release the ledger never accounted (a crafted model can make one appear exactly
when some record satisfies a predicate). What leaves is only the DP release itself
(`release_of`: what one round releases, known before any data is read).
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from client.training.config import OPTIMIZERS, DPTrainConfig
from privacy.dp import clip_norm, effective_sample_rate, steps_per_epoch

# |logit| bound: sigmoid(30) rounds to 1 in float32, so bounding changes no sane prediction, and
# beyond it only overflow (inf, then NaN) lives.
LOGIT_BOUND = 30.0

# an update rule's per-parameter state (torch's optimizer `state_dict()["state"]`: parameter
# index → tensors), carried from one round of a run to the next by the node
Moments = dict[int, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class TrainResult:
    """A round's release: the noised weights and the mechanism that produced them (no data).

    `moments`: the update rule's state after the round (Adam's moments; empty for SGD), for the
    node to pass to its next round of the same run. It is computed from the noised gradients
    only, so keeping it is post-processing (no ε); it never leaves the node.
    """

    state: dict[str, torch.Tensor]
    noise_multiplier: float
    sample_rate: float
    steps: int
    moments: Moments = field(default_factory=dict)


def release_of(cfg: DPTrainConfig, sigma: float) -> tuple[float, float, int]:
    """(noise multiplier, sample rate, steps) one round of `train_dp` releases — without data.

    The caller charges exactly this to the ledger before training; `train_dp` then takes exactly
    these steps at exactly this rate, whatever the data holds.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"the training noise multiplier must be finite and > 0, got {sigma!r}")
    if cfg.epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {cfg.epochs}")
    q = effective_sample_rate(cfg.sample_rate)
    return float(sigma), q, cfg.epochs * steps_per_epoch(cfg.sample_rate)


def _check_optimiser(cfg: DPTrainConfig) -> None:
    """Settings the update needs; all data-independent, so refusing them reveals nothing."""
    if not (math.isfinite(cfg.max_grad_norm) and cfg.max_grad_norm >= 0):
        raise ValueError(
            f"max_grad_norm must be finite and > 0 (or 0: auto), got {cfg.max_grad_norm!r}"
        )
    if not (math.isfinite(cfg.learning_rate) and cfg.learning_rate >= 0):
        raise ValueError(f"learning_rate must be finite and >= 0, got {cfg.learning_rate!r}")
    if not (math.isfinite(cfg.proximal_mu) and cfg.proximal_mu >= 0):
        raise ValueError(f"proximal_mu must be finite and >= 0, got {cfg.proximal_mu!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")


def _base_optimizer(cfg: DPTrainConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The update rule DPOptimizer hands the privatised gradient to.

    Adam rescales each coordinate by the running RMS of its (noised) gradient, so features whose
    encoded mass sits in a corner of their range move as fast as the others, and the step no longer
    depends on the clipping norm or the batch size: the default learning rate carries over to data
    nobody tuned for. Each step is still bounded (|Δw| ≲ lr per coordinate), which keeps training
    total for any incoming weights.
    """
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    return torch.optim.SGD(params, lr=cfg.learning_rate)


def train_dp(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: DPTrainConfig,
    sigma: float,
    *,
    generator_seed: int | None = None,
    public_rows: int | None = None,
    moments: Moments | None = None,
) -> TrainResult:
    """One round of DP-SGD: exactly `release_of(cfg, sigma)` steps, Poisson rate q = 1/k.

    `x` is (rows, features), any number of rows including none (then every batch is empty and
    each step releases noise only). Sampling and noise come from a generator seeded by
    `generator_seed` (tests) or by the OS — never by anything the coordinator sends. `model` is
    trained in place; the released state is also returned.

    `public_rows` sets the averaging denominator max(1, ⌊q × rows⌋). Give the node's public size
    bucket: without it the actual row count is used (as Opacus does), and the scale of the
    released update then depends on how many rows the node holds.

    `moments`: the update rule's state from this run's previous round (`TrainResult.moments`), so
    Adam continues instead of restarting: a restarted Adam's first steps move every weight by
    ≈ lr whatever its gradient, noise included. Ignored unless it fits the model exactly.
    """
    sigma, q, steps = release_of(cfg, sigma)
    _check_optimiser(cfg)
    gen = torch.Generator().manual_seed(
        secrets.randbits(63) if generator_seed is None else generator_seed
    )
    xs = torch.as_tensor(np.asarray(x, dtype=np.float32))
    ys = torch.as_tensor(np.asarray(y, dtype=np.float32)).reshape(-1)
    _zero_non_finite(model.state_dict().values())  # the caller refuses these: defence in depth
    anchor = {name: p.detach().clone() for name, p in model.named_parameters()}
    rows = len(xs) if public_rows is None else public_rows
    with warnings.catch_warnings():
        # Opacus warns about its non-cryptographic RNG (see README) and torch about hooks
        warnings.simplefilter("ignore")
        dp_model = GradSampleModule(model, loss_reduction="sum")
        base = _base_optimizer(cfg, model.parameters())
        _resume(base, moments)
        optimizer = DPOptimizer(
            base,
            noise_multiplier=sigma,
            max_grad_norm=clip_norm(cfg.max_grad_norm, sigma),
            expected_batch_size=max(1, int(rows * q)),
            loss_reduction="mean",  # Σ clipped + noise, divided by the expected batch
            generator=gen,
        )
        try:
            dp_model.train()  # Opacus records activations only in training mode
            for _ in range(steps):
                _dp_step(dp_model, optimizer, xs, ys, q, gen)
                if cfg.proximal_mu > 0:
                    _proximal_step(model, anchor, cfg.learning_rate * cfg.proximal_mu)
                # post-processing of the noised update, so free: keeps the next step finite
                _zero_non_finite(model.parameters())
        finally:
            dp_model.cleanup()  # leave `model` a plain module again (reusable)
            _forget_gradients(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _zero_non_finite(state.values())
    # the optimizer dies here, so its tensors are handed over as they are (`_resume` copies them)
    after: Moments = {
        int(i): {k: v.detach() for k, v in st.items() if isinstance(v, torch.Tensor)}
        for i, st in base.state_dict()["state"].items()
    }
    return TrainResult(
        state=state, noise_multiplier=sigma, sample_rate=q, steps=steps, moments=after
    )


def _resume(optimizer: torch.optim.Optimizer, moments: Moments | None) -> None:
    """Load the previous round's state into `optimizer` if it fits: the same parameters in the
    same order, every tensor finite and shaped like its parameter. Learning rate and betas stay
    this round's (only the per-parameter state is loaded)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not moments or len(moments) != len(params) or not isinstance(optimizer, torch.optim.Adam):
        return
    expected = {"exp_avg", "exp_avg_sq", "step"}
    for i, p in enumerate(params):
        st = moments.get(i)
        if st is None or set(st) != expected:
            return
        for key in ("exp_avg", "exp_avg_sq"):
            t = st[key]
            if t.shape != p.shape or not bool(torch.isfinite(t).all()):
                return
    current = optimizer.state_dict()
    current["state"] = {i: {k: v.clone() for k, v in st.items()} for i, st in moments.items()}
    optimizer.load_state_dict(current)


def _dp_step(
    dp_model: GradSampleModule,
    optimizer: DPOptimizer,
    xs: torch.Tensor,
    ys: torch.Tensor,
    q: float,
    gen: torch.Generator,
) -> None:
    """One DP-SGD step on a Poisson batch (each row in independently with probability q).

    An empty batch is still a step: zero per-sample gradients, then noise — as accounted.
    """
    chosen = torch.rand(len(xs), generator=gen) < q
    optimizer.zero_grad()
    logits = bounded_logits(dp_model(xs[chosen]).reshape(-1))
    loss = F.binary_cross_entropy_with_logits(logits, ys[chosen], reduction="sum")
    loss.backward()
    drop_non_finite_samples(optimizer.params)
    optimizer.step()


def bounded_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits in [-LOGIT_BOUND, LOGIT_BOUND], NaN as 0: the loss is finite for any weights.

    nan_to_num and clamp pass no gradient through replaced or clamped entries, which is right:
    those are saturated, and their gradient would be 0 × ∞ anyway.
    """
    logits = torch.nan_to_num(logits, nan=0.0, posinf=LOGIT_BOUND, neginf=-LOGIT_BOUND)
    return logits.clamp(-LOGIT_BOUND, LOGIT_BOUND)


@torch.no_grad()
def drop_non_finite_samples(params: Iterable[torch.Tensor]) -> None:
    """Zero, in every parameter, the per-sample gradient of each sample non-finite in any one.

    Clipping cannot bound a NaN (its norm is NaN, and so is the clipped gradient), so a crafted
    model could make the update NaN exactly when some record is sampled. A zeroed sample has norm
    0 ≤ C; finite samples are clipped by the optimizer as usual, so every sample's contribution
    stays within C — the sensitivity the ledger accounts — for every weight vector.
    """
    samples = [g for p in params if isinstance(g := getattr(p, "grad_sample", None), torch.Tensor)]
    if not samples:
        return
    bad = torch.zeros(len(samples[0]), dtype=torch.bool)
    for g in samples:
        bad |= ~torch.isfinite(g.flatten(1)).all(dim=1)
    for g in samples:
        g[bad] = 0.0


def _forget_gradients(model: nn.Module) -> None:
    """Drop what the optimizer leaves on the parameters: the last clipped sum is un-noised."""
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        if hasattr(p, "summed_grad"):
            del p.summed_grad


@torch.no_grad()
def _zero_non_finite(tensors: Iterable[torch.Tensor]) -> None:
    """Replace NaN and ±inf by 0 in place."""
    for t in tensors:
        if t.is_floating_point():
            t.masked_fill_(~torch.isfinite(t), 0.0)


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
