"""Strategy factory: Flower's aggregation strategies, each wrapped to keep per-node replies.

Flower aggregates metrics across nodes; model cards need them per node (ε, examples, AUC), so the
wrapper records each reply's MetricRecord by node id before delegating to the real strategy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg

from common import wire
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from common.run_config import STRATEGY_NAMES as STRATEGY_NAMES  # this registry's keys (tested)

STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
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
    """Keeps each node's release per round (typed by the wire module) and refusals per round."""

    on_reply: OnReply | None = None  # e.g. the coordinator's audit log; may raise to abort

    def _init_recording(self) -> None:
        self.train_by_node: dict[int, dict[int, pb.Trained]] = defaultdict(dict)
        self.eval_by_node: dict[int, dict[int, pb.Evaluated]] = defaultdict(dict)
        self.failures: dict[int, dict[int, str]] = defaultdict(dict)

    def _notify(self, server_round: int, kind: str, replies: list[Message]) -> None:
        if self.on_reply is not None:
            for msg in replies:
                self.on_reply(server_round, kind, msg)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._notify(server_round, "train", replies)
        answers, refused = _split(replies)
        kept: list[Message] = []
        for msg in answers:
            trained = wire.trained_of(msg)
            if isinstance(trained, pb.Refusal):
                refused[msg.metadata.src_node_id] = f"[{trained.code}] {trained.message}"
            else:
                node = msg.metadata.src_node_id
                self.train_by_node[server_round][node] = trained
                if wire.has_histograms(trained.incoming):  # the last round's global model
                    trained.incoming.budget.CopyFrom(trained.budget)
                    self.eval_by_node[server_round - 1][node] = trained.incoming
                kept.append(msg)
        self.failures[server_round].update(refused)
        return super().aggregate_train(server_round, kept)  # type: ignore[misc]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        self._notify(server_round, "evaluate", replies)
        answers, refused = _split(replies)
        kept: list[Message] = []
        for msg in answers:
            evaluated = wire.evaluated_of(msg)
            if isinstance(evaluated, pb.Refusal):
                refused[msg.metadata.src_node_id] = f"[{evaluated.code}] {evaluated.message}"
            else:
                self.eval_by_node[server_round][msg.metadata.src_node_id] = evaluated
                kept.append(msg)
        self.failures[server_round].update(refused)
        return super().aggregate_evaluate(server_round, kept)  # type: ignore[misc]


def make_strategy(
    name: str,
    *,
    proximal_mu: float = 0.0,
    trim_beta: float = 0.2,
    server_learning_rate: float = 1.0,
    server_momentum: float = 0.0,
    evaluate: bool = True,
) -> Any:
    """Build strategy `name` that records per-node replies.

    The roll call already required the run's min-nodes admitted nodes; during rounds the
    strategy goes on with whoever replies (a node dropping out mid-round must not stall the
    run), so it samples from at least one. Replies and failures per round go to the model card.
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
    if key == "fedavgm":  # server SGD with momentum on the averaged update
        kwargs["server_learning_rate"] = server_learning_rate
        kwargs["server_momentum"] = server_momentum
    if key == "fedadam":  # server Adam on the averaged update (Reddi et al. 2021)
        kwargs["eta"] = server_learning_rate
        kwargs["beta_1"] = server_momentum
    strategy = cls(**kwargs)
    strategy._init_recording()
    return strategy
