"""Strategy factory: Flower's aggregation strategies, wrapped to check and keep per-node replies.

Flower aggregates metrics across nodes; model cards need them per node (ε, examples, AUC), so the
wrapper records each reply's MetricRecord by node id before delegating to the real strategy. It
also drops what must not be aggregated (refusals, and replies `server.replies` finds unusable:
wrong shapes, NaN, missing metrics, implausible counts) and caps each node's weight.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg

from common import wire
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from common.run_config import STRATEGY_NAMES as STRATEGY_NAMES  # this registry's keys (tested)
from common.run_config import RunConfig
from server import replies as checks
from server.fleet import RunFailed

log = logging.getLogger("flwr")


class FedAvgClipped(FedAvg):
    """FedAvg of norm-bounded updates: each node's update (its weights − the global weights) is
    scaled down to at most `clip_factor` × the round's median update norm before averaging.

    One node can then move the global model at most `clip_factor` × the typical step / n,
    whatever it sends (a ×100 update counts like a typical one); directions are kept.
    """

    def __init__(self, *, clip_factor: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clip_factor = clip_factor
        self.current_arrays: ArrayRecord | None = None
        self.clipped: dict[int, dict[int, tuple[float, float]]] = defaultdict(dict)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current_arrays = arrays  # the global model this round's updates start from
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if not replies:
            return super().aggregate_train(server_round, replies)
        if self.current_arrays is None:
            raise RuntimeError("fedavg-clipped: configure_train must run before aggregate_train")
        start = {k: a.numpy().astype(np.float64) for k, a in self.current_arrays.items()}
        deltas = [
            {k: a.numpy().astype(np.float64) - start[k] for k, a in _arrays(m).items()}
            for m in replies
        ]
        norms = [float(np.sqrt(sum(float(np.sum(d * d)) for d in ds.values()))) for ds in deltas]
        bound = self.clip_factor * float(np.median(norms))
        clipped: list[Message] = []
        for msg, ds, norm in zip(replies, deltas, norms, strict=True):
            scale = 1.0 if norm <= bound or norm == 0 else bound / norm
            if scale < 1.0:
                self.clipped[server_round][msg.metadata.src_node_id] = (norm, bound)
            arrays = ArrayRecord(
                {k: Array((start[k] + d * scale).astype(np.float32)) for k, d in ds.items()}
            )
            clipped.append(_with_content(msg, arrays, msg.content[wire.METRICS]))
        if self.clipped[server_round]:
            log.info(
                "fedavg-clipped round %s: %s of %s updates clipped to norm %.4g",
                server_round,
                len(self.clipped[server_round]),
                len(replies),
                bound,
            )
        return super().aggregate_train(server_round, clipped)


def _arrays(msg: Message) -> ArrayRecord:
    arrays = msg.content[wire.ARRAYS]
    assert isinstance(arrays, ArrayRecord)  # checked by server.replies before any strategy
    return arrays


def _with_content(msg: Message, arrays: ArrayRecord | None, metrics: Any) -> Message:
    """A copy of reply `msg` (same metadata: sender, round) holding only these records."""
    content = RecordDict({wire.METRICS: metrics})
    if arrays is not None:
        content[wire.ARRAYS] = arrays
    out = copy.copy(msg)
    out.content = content
    return out


STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "fedavg-clipped": FedAvgClipped,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
}


OnReply = Callable[[int, str, Message], None]  # (round, "train" | "evaluate", reply)


def _split(replies: Iterable[Message]) -> tuple[list[Message], dict[int, str]]:
    """(answers, {node: refusal}) — a refusal or error never reaches aggregation."""
    answers: list[Message] = []
    refused: dict[int, str] = {}
    for msg in replies:
        node = msg.metadata.src_node_id
        refusal = wire.refusal_of(msg)
        if refusal is not None:
            refused[node] = f"[{refusal.code}] {refusal.message}"
        else:
            answers.append(msg)
    return answers, refused


class RecordingMixin:
    """Checks each reply, keeps each node's release per round and the reason for each drop.

    A refusal, or a reply `server.replies` finds unusable, never reaches aggregation; its node
    is dropped from that round with the reason (in `failures`, for the model card, and as a
    `round.refused` entry through `on_reply`). If unusable replies leave fewer than `min_nodes`
    usable ones, the run fails (`RunFailed`) instead of publishing a model of too few nodes.
    Weights: each node's claimed num-examples clamped by `server.replies.capped_weights`.
    """

    on_reply: OnReply | None = None  # e.g. the coordinator's audit log; may raise to abort
    min_nodes: int = 1
    max_weight_ratio: float = 1.0

    def _init_recording(self) -> None:
        self.train_by_node: dict[int, dict[int, pb.Trained]] = defaultdict(dict)
        self.eval_by_node: dict[int, dict[int, pb.Evaluated]] = defaultdict(dict)
        self.failures: dict[int, dict[int, str]] = defaultdict(dict)
        self.reference: checks.Signature | None = None  # the global model's arrays
        self.asked: dict[int, set[int]] = {}  # round: the nodes sent its train message

    def _notify(self, server_round: int, kind: str, replies: list[Message]) -> None:
        if self.on_reply is not None:
            for msg in replies:
                self.on_reply(server_round, kind, msg)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.reference = checks.signature(arrays)
        asks = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        self.asked[server_round] = {m.metadata.dst_node_id for m in asks}
        return asks

    def note_unanswered(self, unanswered: dict[int, str]) -> None:
        """The grid's account of the current round's nodes that sent no usable reply (none, or
        an error reply it attributed by message): named on the model card with the reason."""
        current = max(self.asked, default=0)  # the round configure_train last sent
        for node, why in unanswered.items():
            if node in self.asked.get(current, ()):
                self.failures[current][node] = why
                log.warning("round %s: node %s: %s", current, node, why)

    def _drop(
        self, server_round: int, kind: str, dropped: dict[int, tuple[Message, checks.Problem]]
    ) -> None:
        """Record each unusable reply's reason: model card (`failures`) and audit (`on_reply`)."""
        for node, (msg, problem) in dropped.items():
            self.failures[server_round][node] = str(problem)
            log.warning(
                "round %s: dropped node %s's %s reply: %s", server_round, node, kind, problem
            )
            if self.on_reply is not None:
                refusal = pb.Refusal(code=problem.code, message=problem.message)
                self.on_reply(server_round, kind, _as_refusal(msg, refusal))

    def _usable(
        self, server_round: int, kind: str, kept: list[Message], dropped: dict[int, Any]
    ) -> list[Message]:
        """The kept replies with capped weights and only the records aggregation reads."""
        self._drop(server_round, kind, dropped)
        if dropped and len(kept) < self.min_nodes:
            raise RunFailed(
                f"round {server_round}: {len(kept)} usable {kind} repl(ies) after dropping "
                f"{len(dropped)} unusable one(s) (min-nodes={self.min_nodes}): "
                + "; ".join(f"node {n}: {p}" for n, (_m, p) in dropped.items())
            )
        weights = checks.capped_weights(
            {m.metadata.src_node_id: checks.claimed_examples(m) for m in kept},
            self.max_weight_ratio,
        )
        common = set.intersection(*(set(m.content[wire.METRICS]) for m in kept)) if kept else set()
        out = []
        for msg in kept:
            metrics = msg.content[wire.METRICS]
            assert isinstance(metrics, MetricRecord)  # checked by server.replies
            record = MetricRecord(
                {k: v for k, v in metrics.items() if k in common and not isinstance(v, list)}
            )
            record[wire.NUM_EXAMPLES] = weights[msg.metadata.src_node_id]
            arrays = msg.content[wire.ARRAYS] if kind == "train" else None
            out.append(_with_content(msg, arrays, record))  # type: ignore[arg-type]
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._notify(server_round, "train", replies)
        answers, refused = _split(replies)
        # an error reply from the grid itself names no node of the round (note_unanswered
        # attributes it by message); a node's own refusal or error reply is kept
        asked = self.asked.get(server_round)
        refused = {n: why for n, why in refused.items() if asked is None or n in asked}
        reference = self.reference or checks.majority_signature(answers)
        kept: list[Message] = []
        dropped: dict[int, tuple[Message, checks.Problem]] = {}
        for msg in answers:
            node = msg.metadata.src_node_id
            trained = wire.trained_of(msg)
            if isinstance(trained, pb.Refusal):
                dropped[node] = (msg, checks.Problem(trained.code, trained.message))
            elif (problem := checks.check_train(msg, reference)) is not None:
                dropped[node] = (msg, problem)
            else:
                self.train_by_node[server_round][node] = trained
                if wire.has_histograms(trained.incoming):  # the last round's global model
                    trained.incoming.budget.CopyFrom(trained.budget)
                    self.eval_by_node[server_round - 1][node] = trained.incoming
                kept.append(msg)
        self.failures[server_round].update(refused)
        usable = self._usable(server_round, "train", kept, dropped)
        return super().aggregate_train(server_round, usable)  # type: ignore[misc]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        self._notify(server_round, "evaluate", replies)
        answers, refused = _split(replies)
        kept: list[Message] = []
        dropped: dict[int, tuple[Message, checks.Problem]] = {}
        for msg in answers:
            node = msg.metadata.src_node_id
            evaluated = wire.evaluated_of(msg)
            if isinstance(evaluated, pb.Refusal):
                dropped[node] = (msg, checks.Problem(evaluated.code, evaluated.message))
            elif (problem := checks.check_evaluate(msg)) is not None:
                dropped[node] = (msg, problem)
            else:
                self.eval_by_node[server_round][node] = evaluated
                kept.append(msg)
        self.failures[server_round].update(refused)
        usable = self._usable(server_round, "evaluate", kept, dropped)
        return super().aggregate_evaluate(server_round, usable)  # type: ignore[misc]


def _as_refusal(msg: Message, refusal: pb.Refusal) -> Message:
    """Reply `msg` as the refusal the coordinator turned it into (same sender and round)."""
    out = copy.copy(msg)
    out.content = wire.refusal_content(refusal)
    return out


def make_strategy(
    name: str,
    *,
    proximal_mu: float = RunConfig.default("proximal-mu"),
    trim_beta: float = RunConfig.default("trim-beta"),
    server_learning_rate: float = RunConfig.default("server-learning-rate"),
    server_momentum: float = RunConfig.default("server-momentum"),
    clip_factor: float = RunConfig.default("clip-factor"),
    max_weight_ratio: float = RunConfig.default("max-weight-ratio"),
    min_nodes: int = 1,
    evaluate: bool = True,
) -> Any:
    """Build strategy `name` that checks and records per-node replies.

    The roll call already required the run's min-nodes admitted nodes; during rounds the
    strategy goes on with whoever replies (a node dropping out mid-round must not stall the
    run), so it samples from at least one. `min_nodes` (the ServerApp passes the run's
    min-nodes) is the floor of usable replies once unusable ones are dropped. Replies and
    failures per round go to the model card.
    """
    key = name.lower()
    if key not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}': use one of {', '.join(STRATEGIES)}")
    base = STRATEGIES[key]
    cls = type(f"Recording{base.__name__}", (RecordingMixin, base), {})
    kwargs: dict[str, Any] = {
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 1,
        "fraction_evaluate": 1.0 if evaluate else 0.0,
        "arrayrecord_key": wire.ARRAYS,
        "configrecord_key": wire.CONFIG,
        "weighted_by_key": wire.NUM_EXAMPLES,
    }
    if key == "fedprox":
        kwargs["proximal_mu"] = proximal_mu
    if key == "fedtrimmedavg":
        kwargs["beta"] = trim_beta
    if key == "fedavg-clipped":
        kwargs["clip_factor"] = clip_factor
    if key == "fedavgm":  # server SGD with momentum on the averaged update
        kwargs["server_learning_rate"] = server_learning_rate
        kwargs["server_momentum"] = server_momentum
    if key == "fedadam":  # server Adam on the averaged update (Reddi et al. 2021)
        kwargs["eta"] = server_learning_rate
        kwargs["beta_1"] = server_momentum
    strategy = cls(**kwargs)
    strategy._init_recording()
    strategy.min_nodes = min_nodes
    strategy.max_weight_ratio = max_weight_ratio
    return strategy
