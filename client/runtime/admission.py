"""Every input from the coordinator, checked against the owner's limits before data is touched.

Each check depends only on the request, the owner's contract and policy, and public facts (the
node's declared size bucket) — never on the data — so a refusal tells the coordinator nothing
about any customer. A refusal names the limit it hit, so the coordinator's operator can fix it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from client.node import NodeError
from client.training.config import OPTIMIZERS, DPTrainConfig
from client.training.planning import fit_evaluations
from common import wire
from common.contract import Contract
from common.model import model_for
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from privacy.dp import DRIFT_PURPOSE, steps_per_epoch
from privacy.ledger import Policy
from privacy.limits import RequestLimits


def refuse(code: str, message: str) -> NodeError:
    return NodeError(code, message)


@dataclass(frozen=True)
class RunRequest:
    """A run's settings after admission: what the node will do, in its own types."""

    model: str
    train: DPTrainConfig
    server_round: int
    evaluate_incoming: bool = False  # one message per round: evaluate the incoming weights too

    def same_run_as(self, other: RunRequest) -> bool:
        """Every message of a run must ask for the same thing (the reservation covers it)."""
        return self.model == other.model and self.train == other.train


def _finite(name: str, value: float, *, low: float, high: float = math.inf) -> float:
    if not (math.isfinite(value) and low < value <= high):
        bound = f"in ({low:g}, {high:g}]" if math.isfinite(high) else f"> {low:g}"
        raise refuse(f"setting-{name}", f"{name} must be finite and {bound}; got {value!r}")
    return value


def admit_settings(s: pb.RunSettings, contract: Contract, policy: Policy) -> RunRequest:
    """The run's settings, or a refusal naming the setting and the owner's limit."""
    lim: RequestLimits = policy.limits
    if not s.contract_hash:
        raise refuse("contract-hash-missing", "the request carries no contract hash")
    if s.contract_hash != contract.hash:
        raise refuse(
            "contract-mismatch",
            f"this node holds contract {contract.name} v{contract.version} (hash "
            f"{contract.hash[:12]}) but the run uses hash {s.contract_hash[:12]}; agree on one "
            "contract file before training",
        )
    if s.model not in lim.allowed_models:
        raise refuse(
            "model-not-allowed",
            f"model '{s.model[:40]}' is not in this node's allow-list "
            f"({', '.join(lim.allowed_models)})",
        )
    if not 1 <= s.local_epochs <= lim.max_local_epochs:
        raise refuse(
            "limit-local-epochs",
            f"local-epochs {s.local_epochs} is outside 1..{lim.max_local_epochs} (owner's limit)",
        )
    if not 1 <= s.total_rounds <= lim.max_total_rounds:
        raise refuse(
            "limit-total-rounds",
            f"total-rounds {s.total_rounds} is outside 1..{lim.max_total_rounds} (owner's limit)",
        )
    if not 1 <= s.server_round <= s.total_rounds:
        raise refuse(
            "setting-server-round",
            f"server-round {s.server_round} is outside 1..total-rounds ({s.total_rounds})",
        )
    _finite("sample-rate", s.sample_rate, low=0.0, high=1.0)
    steps = s.local_epochs * steps_per_epoch(s.sample_rate)
    if steps > lim.max_steps_per_round:
        raise refuse(
            "limit-steps",
            f"local-epochs × 1/sample-rate = {steps} DP-SGD steps per round exceeds this node's "
            f"limit {lim.max_steps_per_round}; raise sample-rate",
        )
    if s.optimizer not in OPTIMIZERS:
        raise refuse(
            "setting-optimizer",
            f"optimizer '{s.optimizer[:40]}' is not one this node applies "
            f"({', '.join(OPTIMIZERS)}); send one of them",
        )
    evaluating = s.eval_noise != 0 or s.final_eval_noise != 0
    if evaluating and not 2 <= s.eval_bins <= lim.max_eval_bins:
        raise refuse(
            "limit-eval-bins",
            f"eval-bins {s.eval_bins} is outside 2..{lim.max_eval_bins} (owner's limit)",
        )
    for name, value in (
        ("noise-multiplier", s.noise_multiplier),
        ("eval-noise", s.eval_noise),
        ("final-eval-noise", s.final_eval_noise),
        ("drift-reference-noise", s.drift_reference_noise),
    ):
        if name != "noise-multiplier" and value == 0:
            continue  # that release is off (final-eval-noise 0: the same as eval-noise)
        if name == "noise-multiplier" and s.target_epsilon > 0:
            continue  # the node calibrates its own noise; the floor is applied to the result
        if not (math.isfinite(value) and value >= lim.min_noise_multiplier):
            raise refuse(
                "limit-noise",
                f"{name} {value!r} is below this node's minimum {lim.min_noise_multiplier:g}",
            )
    # the drift reference is released only by a node whose owner allows analytics; for any other
    # node it is not part of the run (not planned, not charged, not released)
    reference = float(s.drift_reference_noise) if policy.allows(DRIFT_PURPOSE) else 0.0
    if reference and not 2 <= s.drift_bins <= lim.max_eval_bins:
        raise refuse(
            "limit-drift-bins",
            f"drift-bins {s.drift_bins} is outside 2..{lim.max_eval_bins} (owner's limit)",
        )
    if s.target_epsilon:
        _finite("target-epsilon", s.target_epsilon, low=0.0)
    _finite("learning-rate", s.learning_rate, low=0.0, high=1e3)
    _finite("learning-rate-final", s.learning_rate_final, low=0.0, high=1.0)
    if s.max_grad_norm != 0:  # 0: auto, from the node's own σ (privacy.dp.clip_norm)
        _finite("max-grad-norm", s.max_grad_norm, low=0.0, high=1e6)
    if not (math.isfinite(s.proximal_mu) and 0 <= s.proximal_mu <= 1e6):
        raise refuse(
            "setting-proximal-mu", f"proximal-mu must be in [0, 1e6]; got {s.proximal_mu!r}"
        )
    train = DPTrainConfig(
        epochs=int(s.local_epochs),
        sample_rate=float(s.sample_rate),
        learning_rate=float(s.learning_rate),
        learning_rate_final=float(s.learning_rate_final),
        max_grad_norm=float(s.max_grad_norm),
        noise_multiplier=float(s.noise_multiplier),
        target_epsilon=float(s.target_epsilon),
        delta=policy.delta,  # the owner's δ, whatever the coordinator says
        total_rounds=int(s.total_rounds),
        eval_noise=float(s.eval_noise),
        eval_bins=int(s.eval_bins),
        proximal_mu=float(s.proximal_mu),
        optimizer=s.optimizer,
        final_eval_noise=float(s.final_eval_noise),
        drift_reference_noise=reference,
        drift_bins=int(s.drift_bins) if reference else 0,
    )
    return RunRequest(
        model=s.model,
        train=fit_evaluations(train),  # a target ε below the evaluations' own cost stays usable
        server_round=int(s.server_round),
        evaluate_incoming=bool(s.evaluate_incoming),
    )


def admit_batch(cfg: DPTrainConfig, public_rows: int, limits: RequestLimits) -> None:
    """rows × q must reach the owner's minimum expected batch (rows: the public size bucket)."""
    expected = public_rows * cfg.sample_rate
    if expected < limits.min_expected_batch:
        raise refuse(
            "limit-expected-batch",
            f"sample-rate {cfg.sample_rate:g} gives an expected batch of {expected:.1f} rows at "
            f"this node's declared size (≥{public_rows}); the owner's minimum is "
            f"{limits.min_expected_batch:g}",
        )


def admit_noise(sigma: float, limits: RequestLimits) -> None:
    if not (math.isfinite(sigma) and sigma >= limits.min_noise_multiplier):
        raise refuse(
            "limit-noise",
            f"the run's training noise {sigma:.3f} is below this node's minimum "
            f"{limits.min_noise_multiplier:g}; lower the rounds or raise the target ε",
        )


def admit_weights(
    weights: pb.Weights, model: str, contract: Contract, limits: RequestLimits
) -> torch.nn.Module:
    """The coordinator's weights in a fresh model of the contract's shape, or a refusal.

    Exactly the contract model's tensor names and shapes, every value finite, and the L2 norm of
    the whole vector within the owner's bound.
    """
    module = model_for(model, contract)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got: dict[str, np.ndarray] = {}
    for t in weights.tensors:
        if t.name in got or t.name not in expected:
            raise refuse("weights-shape", f"unexpected or repeated tensor '{t.name[:60]}'")
        try:
            got[t.name] = wire.tensor_values(t)
        except ValueError:
            raise refuse("weights-shape", f"tensor '{t.name}' is malformed") from None
        if got[t.name].shape != expected[t.name]:
            raise refuse(
                "weights-shape",
                f"tensor '{t.name}' has shape {list(got[t.name].shape)}, the contract's "
                f"{model} needs {list(expected[t.name])}",
            )
    if missing := sorted(set(expected) - set(got)):
        raise refuse("weights-shape", f"missing tensors: {', '.join(missing)}")
    if not all(np.isfinite(v).all() for v in got.values()):
        raise refuse("weights-nonfinite", "the weights hold a NaN or infinite value")
    norm = math.sqrt(sum(float(np.square(v.astype(np.float64)).sum()) for v in got.values()))
    if norm > limits.max_weight_norm:
        raise refuse(
            "limit-weight-norm",
            f"the weights' L2 norm {norm:.3g} exceeds this node's bound {limits.max_weight_norm:g}",
        )
    module.load_state_dict({k: torch.from_numpy(v) for k, v in got.items()})
    return module
