"""One federated DP run as the product makes it, in process: train, calibrate, report.

Shared by `bench.quality` (the committed results) and `bench.quality_sweep` (the evidence for the
defaults). Everything is the product's own code without the network:

- each node's round is `client.training.train_dp` with the node's σ (`bench.dp.node_noise`:
  `client.training.noise_multiplier`, calibrated so the whole planned run — every training round,
  every per-round evaluation and the final evaluation — spends at most ε, then floored at the
  owner's minimum) and `public_rows` = the lower end of its public size bucket;
- the coordinator's aggregation is `server.strategies.make_strategy(...)`'s own
  `configure_train` / `aggregate_train` on real Flower replies built by `common.wire` (server-side
  optimizers keep their state across rounds as in a deployed run);
- on `finish` every node releases `client.training.evaluate` of the final model on its held-out
  rows at the final evaluation's σ (`client.training.final_noise`), and the coordinator publishes
  with `server.calibration.publish_calibrated` (Platt map folded into the weights, metrics with
  95 % intervals from `common.estimation`).

It records the TRUE held-out metrics of the published model on the union of the silos' test rows
next to what the model card reports, so bias and coverage can be read off. The nodes' DP
generators and the final releases' noise are seeded (per seed, round and node), so a run is a
replay; the runtime draws both from the OS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.supercore.task_identity import TaskIdentity

from bench.dp import node_noise, public_rows
from client.schedule import for_round
from client.training import (
    DPTrainConfig,
    EvalRelease,
    Moments,
    evaluate,
    final_noise,
    fit_evaluations,
    plan,
    train_dp,
)
from common import wire
from common.metrics import binary_metrics
from common.model import BasisLayout, build_model, predict_logits
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from common.run_config import RunConfig
from privacy.dp import describe_clip
from privacy.dp import epsilon as compose_epsilon


def _d(key: str) -> Any:
    return RunConfig.default(key)


class SiloLike(Protocol):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class Setting:
    """One run configuration: RunConfig's defaults unless a benchmark changes them."""

    model: str = _d("model")
    optimizer: str = _d("optimizer")
    learning_rate: float = _d("learning-rate")
    learning_rate_final: float = _d("learning-rate-final")
    sample_rate: float = _d("sample-rate")
    epochs: int = _d("local-epochs")
    rounds: int = _d("num-server-rounds")
    strategy: str = _d("strategy")
    server_learning_rate: float = _d("server-learning-rate")
    server_momentum: float = _d("server-momentum")
    max_grad_norm: float = _d("max-grad-norm")
    proximal_mu: float = _d("proximal-mu")
    epsilon: float = 1.0  # per node, the whole run (training + every evaluation)
    delta: float = _d("delta")
    eval_noise: float = _d("eval-noise")
    final_eval_noise: float = _d("final-eval-noise")
    eval_bins: int = _d("eval-bins")
    calibrate: bool = _d("calibrate")
    # nodes carry their Adam moments from round to round, as the runtime does (client.runtime.
    # moments); False restarts them every round (the behaviour before; for comparisons only)
    keep_moments: bool = True
    # the drift reference a node may release on finish (server.drift): none in these runs, so a
    # run's ε covers training and evaluations exactly as before that release existed
    drift_reference_noise: float = 0.0
    label: str = ""

    def train_config(self) -> DPTrainConfig:
        """What every node admits (client/runtime/admission.py), target ε instead of σ."""
        return fit_evaluations(
            DPTrainConfig(
                epochs=self.epochs,
                sample_rate=self.sample_rate,
                learning_rate=self.learning_rate,
                learning_rate_final=self.learning_rate_final,
                max_grad_norm=self.max_grad_norm,
                noise_multiplier=float(_d("noise-multiplier")),
                target_epsilon=self.epsilon,
                delta=self.delta,
                total_rounds=self.rounds,
                eval_noise=self.eval_noise,
                eval_bins=self.eval_bins,
                proximal_mu=self.proximal_mu,
                optimizer=self.optimizer,
                final_eval_noise=self.final_eval_noise,
                drift_reference_noise=self.drift_reference_noise,
                drift_bins=int(_d("drift-bins")),
            )
        )

    def overrides(self, items: Sequence[str]) -> dict[str, Any]:
        """`key=value` command-line items as this setting's typed field changes."""
        changes: dict[str, Any] = {}
        for item in items:
            key, _, value = item.partition("=")
            current = getattr(self, key)
            changes[key] = (
                value.lower() in ("1", "true", "yes")
                if isinstance(current, bool)
                else type(current)(value)
            )
        return changes

    def describe(self) -> str:
        server = (
            self.strategy
            if self.strategy == "fedavg"
            else f"{self.strategy} (server lr {self.server_learning_rate}, "
            f"momentum {self.server_momentum})"
        )
        lr = (
            "constant"
            if self.learning_rate_final == 1
            else f"cosine to {self.learning_rate_final}× by the last round"
        )
        return (
            f"`{self.model}`, {self.rounds} rounds of {self.epochs} local epoch(s) at Poisson "
            f"rate {self.sample_rate} ({round(1 / self.sample_rate)} DP-SGD steps per round), "
            f"{self.optimizer} at learning rate {self.learning_rate} ({lr}), clipping "
            f"{describe_clip(self.max_grad_norm)}, server {server}; evaluation σ "
            f"{self.eval_noise} per round "
            f"and {final_noise(self.train_config())} for the final model ({self.eval_bins} "
            f"bins); Platt calibration {'on' if self.calibrate else 'off'}; δ {self.delta}"
        )


class _Grid:
    """Just enough of a Flower Grid for a strategy's `configure_train`: the node ids."""

    def __init__(self, nodes: int) -> None:
        self.nodes = list(range(1, nodes + 1))

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _reply(ask: Message, state: dict[str, torch.Tensor]) -> Message:
    """A node's train reply as the relay builds it (`common.wire.train_content`)."""
    node = ask.metadata.dst_node_id
    weights = pb.Weights(tensors=[wire.tensor_of(k, v.detach().numpy()) for k, v in state.items()])
    trained = pb.Trained(weights=weights, noise_multiplier=1.0, sample_rate=0.02, steps=1)
    reply = Message(wire.train_content(pb.TrainReply(trained=trained)), reply_to=ask)
    reply.metadata.__dict__["_src_node_id"] = node  # as delivered by the SuperLink
    return reply


def dp_seed(seed: int, rnd: int, node: int) -> int:
    """A node's DP generator seed in round `rnd` (the runtime draws it from the OS)."""
    return (seed * 1000 + rnd) * 1000 + node


def federate(
    silos: Sequence[SiloLike],
    n_features: int,
    s: Setting,
    seed: int,
    layout: BasisLayout | None = None,
) -> tuple[torch.nn.Module, float]:
    """The coordinator's rounds with the nodes' own DP training; returns (global model, σ).

    `layout`: the contract's basis (`common.model.basis_layout`), needed by the additive model.
    """
    from server.strategies import make_strategy

    cfg = s.train_config()
    sigma = node_noise(cfg)
    torch.manual_seed(seed)
    model = build_model(s.model, n_features, layout=layout)
    strategy = make_strategy(
        s.strategy,
        server_learning_rate=s.server_learning_rate,
        server_momentum=s.server_momentum,
        evaluate=False,
    )
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    arrays = ArrayRecord(model.state_dict())
    moments: dict[int, Moments] = {}  # each node's update-rule state, kept as its runtime keeps it
    for rnd in range(1, s.rounds + 1):
        asks = list(strategy.configure_train(rnd, arrays, ConfigRecord(), _Grid(len(silos))))
        start = arrays.to_torch_state_dict()
        replies = []
        for ask in asks:
            i = ask.metadata.dst_node_id
            silo = silos[i - 1]
            local = build_model(s.model, n_features, layout=layout)
            local.load_state_dict(start)
            res = train_dp(
                local,
                silo.x_train,
                silo.y_train,
                for_round(cfg, rnd),
                sigma,
                generator_seed=dp_seed(seed, rnd, i),
                public_rows=public_rows(len(silo.x_train)),
                moments=moments.get(i) if s.keep_moments else None,
            )
            moments[i] = res.moments
            TaskIdentity.node_id = i
            replies.append(_reply(ask, res.state))
        TaskIdentity.node_id = 0
        out, _ = strategy.aggregate_train(rnd, replies)
        if out is None:
            raise RuntimeError("aggregation produced no model")
        arrays = out
    model.load_state_dict(arrays.to_torch_state_dict())
    return model, sigma


def final_releases(
    silos: Sequence[SiloLike], model: torch.nn.Module, s: Setting, seed: int
) -> list[EvalRelease]:
    """Each node's `finish` release of the final model: noised histograms of its test rows."""
    rng = np.random.default_rng(10_000 + seed)
    sigma = final_noise(s.train_config())
    return [evaluate(model, x.x_test, x.y_test, sigma, s.eval_bins, rng=rng) for x in silos]


def true_metrics(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    z = predict_logits(model, x).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
    return binary_metrics(y, p)


def spent(s: Setting, sigma: float) -> float:
    """ε of one node's whole run at δ (min(RDP, PLD), as its ledger charges it)."""
    fixed = replace(s.train_config(), target_epsilon=0.0, noise_multiplier=sigma)
    events = plan(fixed)
    return float(compose_epsilon([e[:3] for e in events], s.delta))


def product_run(
    silos: Sequence[SiloLike],
    x_test: np.ndarray,
    y_test: np.ndarray,
    s: Setting,
    seed: int,
    layout: BasisLayout | None = None,
) -> dict[str, Any]:
    """Train, release, calibrate and report as the product does; the truth next to the report.

    `layout`: the contract's basis (`common.model.basis_layout`), needed by the additive model.
    Returns `model` (the published, calibrated module), `sigma` (training noise per node),
    `epsilon` (per node), `raw` and `published` (true metrics on the global test rows) and
    `reported` (the card's estimate and 95 % interval per metric, and whether it covers the truth).
    """
    from server.calibration import publish_calibrated

    n_features = int(x_test.shape[1])
    trained, sigma = federate(silos, n_features, s, seed, layout)
    releases = final_releases(silos, trained, s, seed)
    pub = publish_calibrated(
        s.model, trained.state_dict(), releases, final_noise(s.train_config()),
        calibrate=s.calibrate,
    )  # fmt: skip
    published = build_model(s.model, n_features, layout=layout)
    published.load_state_dict(pub.state)
    truth = true_metrics(published, x_test, y_test)
    reported: dict[str, dict[str, Any]] = {}
    if pub.report is not None:
        for key in ("roc_auc", "log_loss", "brier"):
            est = pub.report.metrics[key]
            lo, hi = est.ci95
            reported[key] = {
                "estimate": est.estimate,
                "ci95": [lo, hi],
                "covered": bool(lo <= truth[key] <= hi),
                "error": est.estimate - truth[key],
            }
    return {
        "model": published,
        "sigma": sigma,
        "epsilon": spent(s, sigma),
        "raw": true_metrics(trained, x_test, y_test),
        "published": truth,
        "reported": reported,
        "calibration": pub.report.calibration.as_dict() if pub.calibrated and pub.report else None,
    }


def base_log_loss(rate: float) -> float:
    """Log loss of always predicting the base rate."""
    return float(-(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)))
