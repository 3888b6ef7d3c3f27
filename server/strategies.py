"""Strategy factory: Flower's aggregation strategies, each wrapped to keep per-node replies.

Flower aggregates metrics across nodes; model cards need them per node (ε, examples, AUC), so the
wrapper records each reply's MetricRecord by node id before delegating to the real strategy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx, FedTrimmedAvg

STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
}


OnReply = Callable[[int, str, Message], None]  # (round, "train" | "evaluate", reply)


def _per_node(
    replies: Iterable[Message],
) -> tuple[list[Message], dict[int, dict[str, Any]], list[int]]:
    replies = list(replies)
    ok: dict[int, dict[str, Any]] = {}
    failed: list[int] = []
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            failed.append(node)
        elif "metrics" in msg.content:
            ok[node] = dict(msg.content["metrics"])
    return replies, ok, failed


class RecordingMixin:
    """Keeps `train[round][node_id]`, `evaluate[round][node_id]` and failures per round."""

    on_reply: OnReply | None = None  # e.g. the coordinator's audit log; may raise to abort

    def _init_recording(self) -> None:
        self.train_by_node: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
        self.eval_by_node: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
        self.failures: dict[int, list[int]] = defaultdict(list)

    def _notify(self, server_round: int, kind: str, replies: list[Message]) -> None:
        if self.on_reply is not None:
            for msg in replies:
                self.on_reply(server_round, kind, msg)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies, ok, failed = _per_node(replies)
        self._notify(server_round, "train", replies)
        self.train_by_node[server_round] = ok
        self.failures[server_round] += failed
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies, ok, failed = _per_node(replies)
        self._notify(server_round, "evaluate", replies)
        self.eval_by_node[server_round] = ok
        self.failures[server_round] += failed
        return super().aggregate_evaluate(server_round, replies)  # type: ignore[misc]


def make_strategy(
    name: str,
    *,
    proximal_mu: float = 0.0,
    trim_beta: float = 0.2,
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
    }
    if key == "fedprox":
        kwargs["proximal_mu"] = proximal_mu
    if key == "fedtrimmedavg":
        kwargs["beta"] = trim_beta
    strategy = cls(**kwargs)
    strategy._init_recording()
    return strategy
