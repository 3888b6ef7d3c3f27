"""Train replies as a SuperLink delivers them to the coordinator's strategy."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from common import wire


def honest_metrics(**extra: float | list[float]) -> dict[str, float | list[float]]:
    """What a node's relay sends with its weights (common.wire.train_content)."""
    return {
        wire.NUM_EXAMPLES: 1.0,
        wire.NOISE_MULTIPLIER: 1.0,
        wire.SAMPLE_RATE: 0.02,
        wire.STEPS: 50.0,
        "epsilon": 0.5,
        "epsilon-total": 0.5,
        "epsilon-cap": 10.0,
        "epsilon-remaining": 9.5,
        "delta": 1e-5,
        **extra,
    }


def train_reply(
    node: int,
    arrays: Mapping[str, np.ndarray] | None,
    metrics: Mapping[str, float | list[float]] | None = None,
    extra: RecordDict | None = None,
) -> Message:
    """Node `node`'s reply to a train message; `extra` records are added as they are."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    ask = Message(
        RecordDict({wire.CONFIG: ConfigRecord()}), dst_node_id=node, message_type=MessageType.TRAIN
    )
    TaskIdentity.node_id = node
    content = RecordDict(
        {wire.METRICS: MetricRecord(dict(honest_metrics() if metrics is None else metrics))}  # type: ignore[arg-type]
    )
    if arrays is not None:
        content[wire.ARRAYS] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    for name, record in (extra or RecordDict()).items():
        content[name] = record
    reply = Message(content, reply_to=ask)
    reply.metadata.__dict__["_src_node_id"] = node  # as delivered by the SuperLink
    TaskIdentity.node_id = 0
    return reply


def model(value: float, shape: tuple[int, ...] = (1, 3)) -> dict[str, np.ndarray]:
    """A logreg-like model whose every weight is `value`."""
    return {
        "linear.weight": np.full(shape, value, dtype=np.float32),
        "linear.bias": np.full((1,), value, dtype=np.float32),
    }
