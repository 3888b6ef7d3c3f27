"""The one mapping between Flower records and the node runtime's messages (protos/atoll/node/v1).

Every key Atoll puts into or reads from a Flower message is named here and nowhere else. Both
sides use it: the coordinator builds requests and reads replies (server/), the node's relay
turns a Flower message into a runtime request and the runtime's reply back into records
(client/client_app.py). The proto classes are the typed view on both sides.

Light by design: the relay imports it, so it needs flwr, numpy and the generated stubs only.
Nothing here raises on hostile input from the other side: what cannot be read becomes a value
the receiver refuses (a zero setting, a tensor with an impossible shape, a malformed reply).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Final, TypeVar

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
from google.protobuf.descriptor import FieldDescriptor

from common.protos.atoll.node.v1 import runtime_pb2 as pb

# -- message types ------------------------------------------------------------------------------
ROLLCALL: Final = f"{MessageType.QUERY}.rollcall"
TRAIN: Final = MessageType.TRAIN
EVALUATE: Final = MessageType.EVALUATE
FINISH: Final = f"{MessageType.QUERY}.finish"

# -- record names inside a message ---------------------------------------------------------------
CONFIG: Final = "config"  # coordinator → node: the run's settings (ConfigRecord)
ARRAYS: Final = "arrays"  # weights both ways (Flower's strategies use this name)
METRICS: Final = "metrics"  # node → coordinator: numbers (MetricRecord)
INFO: Final = "info"  # node → coordinator: names (ConfigRecord)
REFUSAL: Final = "refusal"  # node → coordinator: a refusal instead of an answer (ConfigRecord)

# -- keys -----------------------------------------------------------------------------------------
NUM_EXAMPLES: Final = "num-examples"  # Flower's aggregation weight: public, never a count
HIST_POS, HIST_NEG, EVAL_NOISE = "hist-pos", "hist-neg", "eval-noise"
NODE_NAME, CONTRACT_HASH, SIZE_BUCKET = "node-name", "contract-hash", "size-bucket"
PLANNED_EPSILON, NOISE_MULTIPLIER = "planned-epsilon", "noise-multiplier"
SAMPLE_RATE, STEPS = "sample-rate", "steps"
CODE, MESSAGE = "code", "message"
# finish reply: the drift reference (every feature's noised histogram, concatenated) and its σ
DRIFT_REFERENCE, DRIFT_REFERENCE_NOISE = "drift-reference", "drift-reference-noise"
# RunSettings field → run-config key (the coordinator's settings travel under these names)
SETTINGS_KEYS: Final[Mapping[str, str]] = {
    "contract_hash": "contract-hash",
    "model": "model",
    "local_epochs": "local-epochs",
    "sample_rate": "sample-rate",
    "learning_rate": "learning-rate",
    "max_grad_norm": "max-grad-norm",
    "noise_multiplier": "noise-multiplier",
    "target_epsilon": "target-epsilon",
    "delta": "delta",
    "total_rounds": "total-rounds",
    "eval_noise": "eval-noise",
    "eval_bins": "eval-bins",
    "proximal_mu": "proximal-mu",
    "server_round": "server-round",
    "evaluate_incoming": "evaluate-incoming",
    "optimizer": "optimizer",
    "final_eval_noise": "final-eval-noise",
    "drift_reference_noise": "drift-reference-noise",
    "drift_bins": "drift-bins",
    "learning_rate_final": "learning-rate-final",
}
BUDGET_KEYS: Final[Mapping[str, str]] = {
    "epsilon_run": "epsilon",
    "epsilon_total": "epsilon-total",
    "epsilon_cap": "epsilon-cap",
    "epsilon_remaining": "epsilon-remaining",
    "delta": "delta",
}
RUNTIME_SOCKET: Final = "runtime"  # SuperNode --node-config key: the runtime's local socket
# The signed build's manifest, inside the FAB beside the relay (server/app_store.py writes it at
# publish; the relay forwards it as RunSettings.app_manifest / app_manifest_signature)
APP_MANIFEST_FILE: Final = "app_manifest.json"
MANIFEST, MANIFEST_SIGNATURE = "manifest", "signature"
_MAX_MANIFEST_BYTES = 4096
Carrier = TypeVar("Carrier", pb.RunSettings, pb.QueryRequest)  # what carries a build manifest
_UINT32_MAX = 2**32 - 1


# ================================================================================================
# Coordinator side: requests out, replies in
# ================================================================================================
def settings_record(settings: Mapping[str, str | int | float | bool]) -> ConfigRecord:
    """The run's settings (run-config keys, see SETTINGS_KEYS) as the message's config record."""
    known = set(SETTINGS_KEYS.values())
    return ConfigRecord({k: v for k, v in settings.items() if k in known})


def request(settings: ConfigRecord, arrays: ArrayRecord | None = None) -> RecordDict:
    content = RecordDict({CONFIG: settings})
    if arrays is not None:
        content[ARRAYS] = arrays
    return content


def refusal_of(msg: Message) -> pb.Refusal | None:
    """The node's refusal, if the reply is one (a Flower error reply counts as one too)."""
    if msg.has_error():
        return pb.Refusal(code="error", message=(msg.error.reason or "")[:500])
    if REFUSAL in msg.content:
        rec = msg.content[REFUSAL]
        return pb.Refusal(code=str(rec.get(CODE, "")), message=str(rec.get(MESSAGE, ""))[:500])
    return None


def _budget_from(metrics: Mapping[str, object]) -> pb.Budget:
    return pb.Budget(**{f: _num(metrics.get(k)) for f, k in BUDGET_KEYS.items()})


def joined_of(msg: Message) -> pb.Joined | pb.Refusal:
    if (refused := refusal_of(msg)) is not None:
        return refused
    try:
        info, metrics = msg.content[INFO], msg.content[METRICS]
        return pb.Joined(
            node_name=str(info.get(NODE_NAME, "")),
            contract_hash=str(info.get(CONTRACT_HASH, "")),
            size_bucket=str(info.get(SIZE_BUCKET, "")),
            planned_epsilon=_num(metrics.get(PLANNED_EPSILON)),
            noise_multiplier=_num(metrics.get(NOISE_MULTIPLIER)),
            budget=_budget_from(metrics),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return pb.Refusal(code="malformed-reply", message="roll-call reply lacks info or metrics")


def _histograms(m: Mapping[str, object]) -> pb.Evaluated | None:
    """Noised histograms in a metrics record, if it holds a pair of equal, finite lists."""
    pos, neg = m.get(HIST_POS), m.get(HIST_NEG)
    if not isinstance(pos, list) or not isinstance(neg, list) or len(pos) != len(neg) or not pos:
        return None
    values = [float(v) for v in pos + neg]
    if not all(math.isfinite(v) for v in values):
        return None
    return pb.Evaluated(
        hist_pos=values[: len(pos)],
        hist_neg=values[len(pos) :],
        noise=_num(m.get(EVAL_NOISE)),
        budget=_budget_from(m),
    )


def trained_of(msg: Message) -> pb.Trained | pb.Refusal:
    """The release a train reply describes (its weights stay in the message's ArrayRecord)."""
    if (refused := refusal_of(msg)) is not None:
        return refused
    try:
        m = msg.content[METRICS]
        _ = msg.content[ARRAYS]
        trained = pb.Trained(
            noise_multiplier=_num(m.get(NOISE_MULTIPLIER)),
            sample_rate=_num(m.get(SAMPLE_RATE)),
            steps=int(_num(m.get(STEPS))),
            budget=_budget_from(m),
        )
        if (incoming := _histograms(m)) is not None:
            trained.incoming.CopyFrom(incoming)
        return trained
    except (KeyError, TypeError, ValueError, AttributeError):
        return pb.Refusal(code="malformed-reply", message="train reply lacks arrays or metrics")


def evaluated_of(msg: Message) -> pb.Evaluated | pb.Refusal:
    if (refused := refusal_of(msg)) is not None:
        return refused
    try:
        evaluated = _histograms(msg.content[METRICS])
    except (KeyError, TypeError, ValueError, AttributeError):
        evaluated = None
    if evaluated is None:
        return pb.Refusal(code="malformed-reply", message="evaluate reply lacks histograms")
    return evaluated


def finished_of(msg: Message) -> pb.Finished | pb.Refusal:
    if (refused := refusal_of(msg)) is not None:
        return refused
    try:
        info, metrics = msg.content[INFO], msg.content[METRICS]
        finished = pb.Finished(node_name=str(info.get(NODE_NAME, "")), budget=_budget_from(metrics))
        if (final := _histograms(metrics)) is not None:
            finished.final.CopyFrom(final)
        reference = metrics.get(DRIFT_REFERENCE)
        if isinstance(reference, list) and reference:
            values = [float(v) for v in reference]
            if all(math.isfinite(v) for v in values):  # else: no reference (never a crash)
                finished.drift_reference.extend(values)
                finished.drift_reference_noise = _num(metrics.get(DRIFT_REFERENCE_NOISE))
        return finished
    except (KeyError, TypeError, ValueError, AttributeError):
        return pb.Refusal(code="malformed-reply", message="finish reply lacks info or metrics")


def has_histograms(evaluated: pb.Evaluated) -> bool:
    return len(evaluated.hist_pos) > 0


def budget_metrics(budget: pb.Budget) -> dict[str, float]:
    """A Budget as plain numbers keyed like the wire (for spend reports and model cards)."""
    return {k: float(getattr(budget, f)) for f, k in BUDGET_KEYS.items()}


# ================================================================================================
# Node side (the relay): a Flower message → a runtime request; a runtime reply → records
# ================================================================================================
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


def _num(value: object) -> float:
    """A finite float from a reply field, else 0 (replies are checked again by their reader)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) else 0.0


# ================================================================================================
# Federated analytics: one query message per node (protos: QueryRequest / QueryReply)
# ================================================================================================
QUERY: Final = f"{MessageType.QUERY}.analytics"
QUERY_SPEC: Final = "query-spec"  # coordinator → node: the QuerySpec as protobuf JSON (CONFIG)
QUERY_VALUE_NAMES: Final = "query-value-names"  # INFO: what each cell releases
QUERY_CELL_KEYS: Final = "query-cell-keys"  # INFO: each cell's key, as a JSON list of strings
QUERY_VALUES: Final = "query-values"  # METRICS: cells × values, row-major, noised
QUERY_NOISE_STD: Final = "query-noise-std"  # METRICS: the noise std of each value
QUERY_EPSILON: Final = "query-epsilon"  # METRICS: ε of this query alone on the node
SENSITIVITY: Final = "sensitivity"  # METRICS: L2 sensitivity of the released vector
_MAX_SPEC_CHARS = 65_536


def query_record(spec: pb.QuerySpec) -> ConfigRecord:
    """The query as the message's config record (coordinator side)."""
    from google.protobuf import json_format

    return ConfigRecord({QUERY_SPEC: json_format.MessageToJson(spec, indent=None)})


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


def answered_of(msg: Message) -> pb.Answered | pb.Refusal:
    """A node's answer (coordinator side); malformed or non-finite values are a refusal."""
    import json

    if (refused := refusal_of(msg)) is not None:
        return refused
    malformed = pb.Refusal(code="malformed-reply", message="query reply lacks or garbles values")
    try:
        info, m = msg.content[INFO], msg.content[METRICS]
        raw_names, raw_keys = info.get(QUERY_VALUE_NAMES), info.get(QUERY_CELL_KEYS)
        if not isinstance(raw_names, list) or not isinstance(raw_keys, list):
            return malformed
        names = [str(v) for v in raw_names]
        keys = [json.loads(str(k)) for k in raw_keys]
        values, stds = m.get(QUERY_VALUES), m.get(QUERY_NOISE_STD)
        if not names or not isinstance(values, list) or not isinstance(stds, list):
            return malformed
        numbers = [float(v) for v in values + stds]
        if len(values) != len(stds) or len(values) != len(keys) * len(names):
            return malformed
        if not all(math.isfinite(v) for v in numbers) or any(s < 0 for s in numbers[len(values) :]):
            return malformed
        if not all(isinstance(k, list) and all(isinstance(x, str) for x in k) for k in keys):
            return malformed
        width = len(names)
        return pb.Answered(
            node_name=str(info.get(NODE_NAME, "")),
            value_names=names,
            cells=[
                pb.Cell(
                    key=key,
                    values=numbers[i * width : (i + 1) * width],
                    noise_std=numbers[len(values) + i * width : len(values) + (i + 1) * width],
                )
                for i, key in enumerate(keys)
            ],
            noise_multiplier=_num(m.get(NOISE_MULTIPLIER)),
            sensitivity=_num(m.get(SENSITIVITY)),
            epsilon=_num(m.get(QUERY_EPSILON)),
            budget=_budget_from(m),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return malformed
