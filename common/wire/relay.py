"""The node relay's half of the wire mapping (client/client_app.py): a Flower message → a
runtime request; the runtime's reply → records.

What the coordinator sent is read leniently: a value of the wrong type or range arrives as 0 or
empty, which the runtime refuses. The keys it uses live in `common.wire.keys`; `common.wire`
re-exports its functions (callers write `wire.X`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from google.protobuf.descriptor import FieldDescriptor

from common.protos.atoll.node.v1 import runtime_pb2 as pb
from common.wire.keys import (
    ARRAYS,
    BUDGET_KEYS,
    CODE,
    CONFIG,
    CONTRACT_HASH,
    DRIFT_REFERENCE,
    DRIFT_REFERENCE_NOISE,
    EVAL_NOISE,
    HIST_NEG,
    HIST_POS,
    INFO,
    MANIFEST,
    MANIFEST_SIGNATURE,
    MESSAGE,
    METRICS,
    NODE_NAME,
    NOISE_MULTIPLIER,
    NUM_EXAMPLES,
    PLANNED_EPSILON,
    QUERY_CELL_KEYS,
    QUERY_EPSILON,
    QUERY_NOISE_STD,
    QUERY_SPEC,
    QUERY_VALUE_NAMES,
    QUERY_VALUES,
    REFUSAL,
    SAMPLE_RATE,
    SENSITIVITY,
    SETTINGS_KEYS,
    SIZE_BUCKET,
    STEPS,
)

_MAX_MANIFEST_BYTES = 4096
Carrier = TypeVar("Carrier", pb.RunSettings, pb.QueryRequest)  # what carries a build manifest
_UINT32_MAX = 2**32 - 1
_MAX_SPEC_CHARS = 65_536


def budget_metrics(budget: pb.Budget) -> dict[str, float]:
    """A Budget as plain numbers keyed like the wire (for spend reports and model cards)."""
    return {k: float(getattr(budget, f)) for f, k in BUDGET_KEYS.items()}


def caller(run_id: int | str, node_id: int, message_id: str) -> pb.Caller:
    return pb.Caller(run_id=str(run_id), node_id=int(node_id), message_id=str(message_id))


def settings_of(content: RecordDict) -> pb.RunSettings:
    """The coordinator's settings; a value of the wrong type or range arrives as 0 (refused)."""
    cfg = content[CONFIG] if CONFIG in content else ConfigRecord()
    out = pb.RunSettings()
    for field, key in SETTINGS_KEYS.items():
        value = cfg.get(key) if isinstance(cfg, ConfigRecord) else None
        kind = pb.RunSettings.DESCRIPTOR.fields_by_name[field].type
        if kind == FieldDescriptor.TYPE_STRING:
            if isinstance(value, str):
                setattr(out, field, value[:200])
        elif kind == FieldDescriptor.TYPE_BOOL:
            if isinstance(value, bool):
                setattr(out, field, value)
        elif kind == FieldDescriptor.TYPE_UINT32:
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _UINT32_MAX:
                setattr(out, field, value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            setattr(out, field, float(value))
    return out


def with_manifest(settings: Carrier, manifest_file: Path) -> Carrier:
    """`settings` (a RunSettings or QueryRequest) plus the build manifest found in
    `manifest_file` (the relay's own FAB copy); anything the coordinator's message said about a
    manifest is replaced. Unreadable or unsigned: both fields stay empty (a node that checks
    builds refuses that)."""
    settings.ClearField("app_manifest")
    settings.ClearField("app_manifest_signature")
    try:
        raw = json.loads(manifest_file.read_bytes()[:_MAX_MANIFEST_BYTES])
        manifest, signature = raw[MANIFEST], bytes.fromhex(raw[MANIFEST_SIGNATURE])
    except (OSError, ValueError, TypeError, KeyError):
        return settings
    if isinstance(manifest, str):
        settings.app_manifest, settings.app_manifest_signature = manifest, signature
    return settings


def weights_of(content: RecordDict) -> pb.Weights:
    """Incoming weights as float32 tensors; an array that is not numeric keeps shape [-1]."""
    weights = pb.Weights()
    arrays = content.get(ARRAYS)
    if not isinstance(arrays, ArrayRecord):
        return weights
    for name, array in arrays.items():
        try:
            values = np.ascontiguousarray(array.numpy(), dtype="<f4")
            weights.tensors.add(name=name, shape=list(values.shape), data=values.tobytes())
        except (TypeError, ValueError, OverflowError):
            weights.tensors.add(name=name, shape=[-1], data=b"")
    return weights


def arrays_of(weights: pb.Weights) -> ArrayRecord:
    """Outgoing weights (from the runtime, well-formed) as Flower's ArrayRecord."""
    return ArrayRecord({t.name: Array(tensor_values(t)) for t in weights.tensors})


def tensor_values(tensor: pb.Tensor) -> np.ndarray:
    """A Tensor's values; raises ValueError if data and shape disagree."""
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"tensor '{tensor.name}' is not a numeric array")
    values = np.frombuffer(tensor.data, dtype="<f4")
    if values.size != math.prod(shape):
        raise ValueError(f"tensor '{tensor.name}': {values.size} values for shape {list(shape)}")
    return values.reshape(shape).copy()


def tensor_of(name: str, values: np.ndarray) -> pb.Tensor:
    v = np.ascontiguousarray(values, dtype="<f4")
    return pb.Tensor(name=name, shape=list(v.shape), data=v.tobytes())


def refusal_content(refusal: pb.Refusal) -> RecordDict:
    return RecordDict({REFUSAL: ConfigRecord({CODE: refusal.code, MESSAGE: refusal.message})})


def rollcall_content(reply: pb.RollCallReply) -> RecordDict:
    if reply.WhichOneof("outcome") != "joined":
        return refusal_content(reply.refusal)
    j = reply.joined
    info = ConfigRecord(
        {NODE_NAME: j.node_name, CONTRACT_HASH: j.contract_hash, SIZE_BUCKET: j.size_bucket}
    )
    metrics = {
        PLANNED_EPSILON: j.planned_epsilon,
        NOISE_MULTIPLIER: j.noise_multiplier,
        **budget_metrics(j.budget),
    }
    return RecordDict({INFO: info, METRICS: MetricRecord(dict(metrics))})


def train_content(reply: pb.TrainReply) -> RecordDict:
    if reply.WhichOneof("outcome") != "trained":
        return refusal_content(reply.refusal)
    t = reply.trained
    metrics: dict[str, float | list[float]] = {
        NUM_EXAMPLES: 1.0,  # equal weights: an exact example count would leave the node
        NOISE_MULTIPLIER: t.noise_multiplier,
        SAMPLE_RATE: t.sample_rate,
        STEPS: float(t.steps),
        **budget_metrics(t.budget),
        **_histogram_record(t.incoming),
    }
    return RecordDict(
        {ARRAYS: arrays_of(t.weights), METRICS: MetricRecord(dict(metrics))}  # type: ignore[arg-type]
    )


def _histogram_record(e: pb.Evaluated) -> dict[str, float | list[float]]:
    if not e.hist_pos:
        return {}
    return {HIST_POS: list(e.hist_pos), HIST_NEG: list(e.hist_neg), EVAL_NOISE: e.noise}


def evaluate_content(reply: pb.EvaluateReply) -> RecordDict:
    if reply.WhichOneof("outcome") != "evaluated":
        return refusal_content(reply.refusal)
    e = reply.evaluated
    metrics: dict[str, float | list[float]] = {
        HIST_POS: list(e.hist_pos),
        HIST_NEG: list(e.hist_neg),
        EVAL_NOISE: e.noise,
        NUM_EXAMPLES: 1.0,  # equal weights, as in training
        **budget_metrics(e.budget),
    }
    return RecordDict({METRICS: MetricRecord(dict(metrics))})  # type: ignore[arg-type]


def finish_content(reply: pb.FinishReply) -> RecordDict:
    if reply.WhichOneof("outcome") != "finished":
        return refusal_content(reply.refusal)
    f = reply.finished
    info = ConfigRecord({NODE_NAME: f.node_name})
    metrics: dict[str, float | list[float]] = {
        **budget_metrics(f.budget),
        **_histogram_record(f.final),
    }
    if f.drift_reference:
        metrics[DRIFT_REFERENCE] = [float(v) for v in f.drift_reference]
        metrics[DRIFT_REFERENCE_NOISE] = float(f.drift_reference_noise)
    return RecordDict({INFO: info, METRICS: MetricRecord(dict(metrics))})  # type: ignore[arg-type]


def query_spec_of(content: RecordDict) -> pb.QuerySpec:
    """The coordinator's query; anything unreadable arrives as an empty spec (refused)."""
    from google.protobuf import json_format

    cfg = content[CONFIG] if CONFIG in content else ConfigRecord()
    text = cfg.get(QUERY_SPEC) if isinstance(cfg, ConfigRecord) else None
    spec = pb.QuerySpec()
    if isinstance(text, str) and len(text) <= _MAX_SPEC_CHARS:
        try:
            json_format.Parse(text, spec)
        except (json_format.ParseError, ValueError, TypeError):
            spec = pb.QuerySpec()
    return spec


def query_content(reply: pb.QueryReply) -> RecordDict:
    """A runtime's answer as records (node side)."""
    import json

    if reply.WhichOneof("outcome") != "answered":
        return refusal_content(reply.refusal)
    a = reply.answered
    info = ConfigRecord(
        {
            NODE_NAME: a.node_name,
            QUERY_VALUE_NAMES: list(a.value_names),
            QUERY_CELL_KEYS: [json.dumps(list(c.key)) for c in a.cells],
        }
    )
    metrics: dict[str, float | list[float]] = {
        QUERY_VALUES: [float(v) for c in a.cells for v in c.values],
        QUERY_NOISE_STD: [float(v) for c in a.cells for v in c.noise_std],
        NOISE_MULTIPLIER: a.noise_multiplier,
        SENSITIVITY: a.sensitivity,
        QUERY_EPSILON: a.epsilon,
        NUM_EXAMPLES: 1.0,
        **budget_metrics(a.budget),
    }
    return RecordDict({INFO: info, METRICS: MetricRecord(dict(metrics))})  # type: ignore[arg-type]
