"""Aggregation strategies on real Flower replies: what each computes, and per-node recording."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common import wire
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from server.run_settings import RunSettings, RunSettingsError
from server.strategies import make_strategy


def _replies(values: list[float], examples: list[int]) -> list[Message]:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    out = []
    for node, (v, n) in enumerate(zip(values, examples, strict=True), start=1):
        ask = Message(
            RecordDict({"config": ConfigRecord()}), dst_node_id=node, message_type=MessageType.TRAIN
        )
        TaskIdentity.node_id = node
        arrays = ArrayRecord([np.full((2,), v, dtype=np.float32)])
        metrics = MetricRecord({"num-examples": n, "epsilon": 0.1 * node})
        reply = Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=ask)
        reply.metadata.__dict__["_src_node_id"] = node  # as delivered by the SuperLink
        out.append(reply)
    return out


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fedavg", (1 * 100 + 2 * 100 + 3 * 100 + 100 * 700) / 1000),
        ("fedprox", (1 * 100 + 2 * 100 + 3 * 100 + 100 * 700) / 1000),
        ("fedmedian", 2.5),
        ("fedtrimmedavg", 2.5),  # beta 0.25 of 4 trims one low and one high
    ],
)
def test_strategy_aggregates_and_records_each_node(name: str, expected: float) -> None:
    # claims of 100..700 stay within 7 × the lower median (100): weights as claimed
    strategy = make_strategy(name, proximal_mu=0.1, trim_beta=0.25, max_weight_ratio=7.0)
    seen: list[tuple[int, str, int]] = []
    strategy.on_reply = lambda rnd, kind, msg: seen.append(
        (rnd, kind, msg.metadata.src_node_id)
    )
    replies = _replies([1.0, 2.0, 3.0, 100.0], [100, 100, 100, 700])
    arrays, _metrics = strategy.aggregate_train(1, replies)
    got = arrays.to_numpy_ndarrays()[0]
    assert np.allclose(got, expected)
    assert sorted(strategy.train_by_node[1]) == [1, 2, 3, 4]
    assert strategy.train_by_node[1][3].budget.epsilon_run == pytest.approx(0.3)
    assert [s[2] for s in seen] == [1, 2, 3, 4] and {s[1] for s in seen} == {"train"}


def test_refusals_never_reach_aggregation_and_are_recorded() -> None:
    strategy = make_strategy("fedavg")
    replies = _replies([1.0, 2.0, 3.0], [1, 1, 1])
    replies[2].content = wire.refusal_content(pb.Refusal(code="limit-noise", message="too low"))
    arrays, _metrics = strategy.aggregate_train(1, replies)
    assert np.allclose(arrays.to_numpy_ndarrays()[0], 1.5)  # nodes 1 and 2 only
    assert sorted(strategy.train_by_node[1]) == [1, 2]
    assert strategy.failures[1] == {3: "[limit-noise] too low"}


def test_unknown_strategy_and_bad_run_config_are_named() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fedfoo'"):
        make_strategy("fedfoo")
    with pytest.raises(RunSettingsError, match="strategy"):
        RunSettings.from_run_config(
            {"strategy": "fedfoo", "contract-hash": "c" * 64}
        )
    with pytest.raises(RunSettingsError, match="contract-hash"):
        RunSettings.from_run_config({})
    with pytest.raises(RunSettingsError, match="sample-rate"):
        RunSettings.from_run_config({"sample-rate": 2, "contract-hash": "c" * 64})


def _prime(strategy, values: list[float]) -> None:  # type: ignore[no-untyped-def]
    """What `configure_train` records before a round: the global model the replies started from."""
    arrays = ArrayRecord([np.full((2,), v, dtype=np.float32) for v in values])
    if hasattr(strategy, "m_t"):  # FedOpt keeps numpy arrays by key
        strategy.current_arrays = {k: a.numpy() for k, a in arrays.items()}
    else:
        strategy.current_arrays = arrays


def test_fedavgm_applies_server_learning_rate_and_momentum() -> None:
    strategy = make_strategy("fedavgm", server_learning_rate=2.0, server_momentum=0.5)
    _prime(strategy, [0.0])
    arrays, _ = strategy.aggregate_train(1, _replies([1.0, 3.0], [1, 1]))
    got = arrays.to_numpy_ndarrays()[0]
    assert np.allclose(got, 4.0)  # average update +2, server lr 2 → +4
    assert sorted(strategy.train_by_node[1]) == [1, 2]
    # round 2 from 4.0: update +1 (avg of 5, 5 − 4), momentum 0.5 × (−2) + (−1) = −2 → +4 → 8
    arrays, _ = strategy.aggregate_train(2, _replies([5.0, 5.0], [1, 1]))
    assert np.allclose(arrays.to_numpy_ndarrays()[0], 8.0)


def test_fedadam_moves_each_coordinate_by_about_its_server_learning_rate() -> None:
    strategy = make_strategy("fedadam", server_learning_rate=0.1, server_momentum=0.9)
    _prime(strategy, [0.0])
    arrays, _ = strategy.aggregate_train(1, _replies([10.0, 30.0], [1, 1]))
    got = arrays.to_numpy_ndarrays()[0]
    assert np.all(got > 0) and np.all(got < 0.5)  # Adam: a step of order eta, not the raw +20
    assert strategy.eta == 0.1 and strategy.beta_1 == 0.9


def test_the_default_run_builds_the_default_strategy() -> None:
    settings = RunSettings.from_run_config({"contract-hash": "c" * 64, "registry-url": "r"})
    strategy = make_strategy(
        settings.strategy,
        server_learning_rate=settings.server_learning_rate,
        server_momentum=settings.server_momentum,
    )
    assert type(strategy).__name__ == "RecordingFedAvg"
