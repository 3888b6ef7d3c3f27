"""The coordinator's half of the wire mapping: requests out, replies in (server/).

Settings become a message's config record; a node's reply becomes the runtime's typed message
(`Joined`, `Trained`, `Evaluated`, `Finished`, `Answered`) or a `Refusal`. A reply that cannot be
read is a refusal ("malformed-reply"), never an exception. The keys it uses live in
`common.wire.keys`; `common.wire` re-exports its functions (callers write `wire.X`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from common.protos.atoll.node.v1 import runtime_pb2 as pb
from common.wire import keys


def settings_record(settings: Mapping[str, str | int | float | bool]) -> ConfigRecord:
    """The run's settings (run-config keys, see SETTINGS_KEYS) as the message's config record."""
    known = set(keys.SETTINGS_KEYS.values())
    return ConfigRecord({k: v for k, v in settings.items() if k in known})


def request(settings: ConfigRecord, arrays: ArrayRecord | None = None) -> RecordDict:
    content = RecordDict({keys.CONFIG: settings})
    if arrays is not None:
        content[keys.ARRAYS] = arrays
    return content


def refusal_of(msg: Message) -> pb.Refusal | None:
    """The node's refusal, if the reply is one (a Flower error reply counts as one too)."""
    if msg.has_error():
        return pb.Refusal(code="error", message=(msg.error.reason or "")[:500])
    if keys.REFUSAL in msg.content:
        rec = msg.content[keys.REFUSAL]
        return pb.Refusal(
            code=str(rec.get(keys.CODE, "")), message=str(rec.get(keys.MESSAGE, ""))[:500]
        )
    return None


def _budget_from(metrics: Mapping[str, object]) -> pb.Budget:
    return pb.Budget(**{f: _num(metrics.get(k)) for f, k in keys.BUDGET_KEYS.items()})


def joined_of(msg: Message) -> pb.Joined | pb.Refusal:
    if (refused := refusal_of(msg)) is not None:
        return refused
    try:
        info, metrics = msg.content[keys.INFO], msg.content[keys.METRICS]
        return pb.Joined(
            node_name=str(info.get(keys.NODE_NAME, "")),
            contract_hash=str(info.get(keys.CONTRACT_HASH, "")),
            size_bucket=str(info.get(keys.SIZE_BUCKET, "")),
            planned_epsilon=_num(metrics.get(keys.PLANNED_EPSILON)),
            noise_multiplier=_num(metrics.get(keys.NOISE_MULTIPLIER)),
            budget=_budget_from(metrics),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return pb.Refusal(code="malformed-reply", message="roll-call reply lacks info or metrics")


def _histograms(m: Mapping[str, object]) -> pb.Evaluated | None:
    """Noised histograms in a metrics record, if it holds a pair of equal, finite lists."""
    pos, neg = m.get(keys.HIST_POS), m.get(keys.HIST_NEG)
    if not isinstance(pos, list) or not isinstance(neg, list) or len(pos) != len(neg) or not pos:
        return None
    values = [float(v) for v in pos + neg]
    if not all(math.isfinite(v) for v in values):
        return None
    return pb.Evaluated(
        hist_pos=values[: len(pos)],
        hist_neg=values[len(pos) :],
        noise=_num(m.get(keys.EVAL_NOISE)),
        budget=_budget_from(m),
    )


def trained_of(msg: Message) -> pb.Trained | pb.Refusal:
    """The release a train reply describes (its weights stay in the message's ArrayRecord)."""
    if (refused := refusal_of(msg)) is not None:
        return refused
    try:
        m = msg.content[keys.METRICS]
        _ = msg.content[keys.ARRAYS]
        trained = pb.Trained(
            noise_multiplier=_num(m.get(keys.NOISE_MULTIPLIER)),
            sample_rate=_num(m.get(keys.SAMPLE_RATE)),
            steps=int(_num(m.get(keys.STEPS))),
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
        evaluated = _histograms(msg.content[keys.METRICS])
    except (KeyError, TypeError, ValueError, AttributeError):
        evaluated = None
    if evaluated is None:
        return pb.Refusal(code="malformed-reply", message="evaluate reply lacks histograms")
    return evaluated


def finished_of(msg: Message) -> pb.Finished | pb.Refusal:
    if (refused := refusal_of(msg)) is not None:
        return refused
    try:
        info, metrics = msg.content[keys.INFO], msg.content[keys.METRICS]
        finished = pb.Finished(
            node_name=str(info.get(keys.NODE_NAME, "")), budget=_budget_from(metrics)
        )
        if (final := _histograms(metrics)) is not None:
            finished.final.CopyFrom(final)
        reference = metrics.get(keys.DRIFT_REFERENCE)
        if isinstance(reference, list) and reference:
            values = [float(v) for v in reference]
            if all(math.isfinite(v) for v in values):  # else: no reference (never a crash)
                finished.drift_reference.extend(values)
                finished.drift_reference_noise = _num(metrics.get(keys.DRIFT_REFERENCE_NOISE))
        return finished
    except (KeyError, TypeError, ValueError, AttributeError):
        return pb.Refusal(code="malformed-reply", message="finish reply lacks info or metrics")


def has_histograms(evaluated: pb.Evaluated) -> bool:
    return len(evaluated.hist_pos) > 0


def _num(value: object) -> float:
    """A finite float from a reply field, else 0 (replies are checked again by their reader)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) else 0.0


def query_record(spec: pb.QuerySpec) -> ConfigRecord:
    """The query as the message's config record (coordinator side)."""
    from google.protobuf import json_format

    return ConfigRecord({keys.QUERY_SPEC: json_format.MessageToJson(spec, indent=None)})


def answered_of(msg: Message) -> pb.Answered | pb.Refusal:
    """A node's answer (coordinator side); malformed or non-finite values are a refusal."""
    import json

    if (refused := refusal_of(msg)) is not None:
        return refused
    malformed = pb.Refusal(code="malformed-reply", message="query reply lacks or garbles values")
    try:
        info, m = msg.content[keys.INFO], msg.content[keys.METRICS]
        raw_names, raw_keys = info.get(keys.QUERY_VALUE_NAMES), info.get(keys.QUERY_CELL_KEYS)
        if not isinstance(raw_names, list) or not isinstance(raw_keys, list):
            return malformed
        names = [str(v) for v in raw_names]
        cell_keys = [json.loads(str(k)) for k in raw_keys]
        values, stds = m.get(keys.QUERY_VALUES), m.get(keys.QUERY_NOISE_STD)
        if not names or not isinstance(values, list) or not isinstance(stds, list):
            return malformed
        numbers = [float(v) for v in values + stds]
        if len(values) != len(stds) or len(values) != len(cell_keys) * len(names):
            return malformed
        if not all(math.isfinite(v) for v in numbers) or any(s < 0 for s in numbers[len(values) :]):
            return malformed
        if not all(isinstance(k, list) and all(isinstance(x, str) for x in k) for k in cell_keys):
            return malformed
        width = len(names)
        return pb.Answered(
            node_name=str(info.get(keys.NODE_NAME, "")),
            value_names=names,
            cells=[
                pb.Cell(
                    key=key,
                    values=numbers[i * width : (i + 1) * width],
                    noise_std=numbers[len(values) + i * width : len(values) + (i + 1) * width],
                )
                for i, key in enumerate(cell_keys)
            ],
            noise_multiplier=_num(m.get(keys.NOISE_MULTIPLIER)),
            sensitivity=_num(m.get(keys.SENSITIVITY)),
            epsilon=_num(m.get(keys.QUERY_EPSILON)),
            budget=_budget_from(m),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return malformed
