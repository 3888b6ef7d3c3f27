"""What makes a node's reply usable for aggregation, checked before any strategy sees it.

A node is not trusted for the quality of what it sends (README, "Faults"): a broken or hostile
node may return NaN weights, arrays of another shape, drop a metric, or claim a huge example
count to dominate a weighted average. `check_train` / `check_evaluate` name what is wrong with a
reply (`Problem`: a stable code and a message without any of the reply's values); the strategy
drops that node from the round and records the reason. `capped_weights` bounds the weight a
claimed example count can buy. Nothing here raises on hostile input.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from common import wire

Signature = tuple[tuple[str, tuple[int, ...]], ...]  # (array name, shape) in record order

# the largest public size bucket's upper end (client.runtime.config: a 1-2-5 series up to 5e9
# rows): no claim of examples above it is plausible (Atoll's own nodes claim 1, see common.wire)
MAX_CLAIMED_EXAMPLES = 5e9
TRAIN_METRICS = (wire.NUM_EXAMPLES, wire.BUDGET_KEYS["epsilon_run"])  # aggregation, model card
EVALUATE_METRICS = (wire.NUM_EXAMPLES, wire.HIST_POS, wire.HIST_NEG)


@dataclass(frozen=True)
class Problem:
    """Why a reply is unusable: `code` is stable (audit, model card), `message` is for people."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


def signature(arrays: ArrayRecord) -> Signature:
    """The names and shapes of a model's arrays (what every train reply must match)."""
    return tuple((name, tuple(int(d) for d in array.shape)) for name, array in arrays.items())


def _only(msg: Message, kind: type[ArrayRecord] | type[MetricRecord]) -> object | None:
    """The message's single record of `kind` under its wire name, or None."""
    records = msg.content.array_records if kind is ArrayRecord else msg.content.metric_records
    key = wire.ARRAYS if kind is ArrayRecord else wire.METRICS
    if len(records) != 1 or key not in records:
        return None
    return records[key]


def _metrics_problem(metrics: MetricRecord, required: tuple[str, ...]) -> Problem | None:
    missing = [k for k in required if k not in metrics]
    if missing:
        return Problem("reply-metric-missing", f"metrics lack {', '.join(sorted(missing))}")
    bad = []
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            bad.append(key)
    if bad:
        return Problem("reply-metric-nonfinite", f"non-finite metric {', '.join(sorted(bad))}")
    claim = metrics[wire.NUM_EXAMPLES]
    if isinstance(claim, list) or not 0 < float(claim) <= MAX_CLAIMED_EXAMPLES:
        return Problem(
            "reply-examples",
            f"{wire.NUM_EXAMPLES} must be one number in (0, {MAX_CLAIMED_EXAMPLES:.0e}]",
        )
    return None


def check_train(msg: Message, reference: Signature) -> Problem | None:
    """None if the train reply can be aggregated into a model whose arrays are `reference`."""
    arrays, metrics = _only(msg, ArrayRecord), _only(msg, MetricRecord)
    if not isinstance(arrays, ArrayRecord) or not isinstance(metrics, MetricRecord):
        return Problem(
            "reply-malformed",
            f"a train reply holds exactly one ArrayRecord '{wire.ARRAYS}' and one MetricRecord "
            f"'{wire.METRICS}'",
        )
    try:
        got = signature(arrays)
    except (TypeError, ValueError):
        got = ()
    if got != reference:
        expected = ", ".join(f"{n}{list(s)}" for n, s in reference)
        return Problem("reply-shape", f"arrays differ from the global model's ({expected})")
    for name, array in arrays.items():
        try:
            values = array.numpy()
        except (TypeError, ValueError):
            return Problem("reply-malformed", f"array '{name}' is not a numeric array")
        if values.dtype.kind not in "fiu":
            return Problem("reply-malformed", f"array '{name}' is not a numeric array")
        if not np.all(np.isfinite(values)):
            return Problem("reply-nonfinite", f"array '{name}' holds NaN or infinite values")
    return _metrics_problem(metrics, TRAIN_METRICS)


def check_evaluate(msg: Message) -> Problem | None:
    """None if the evaluate reply's metrics are complete and finite."""
    metrics = _only(msg, MetricRecord)
    if not isinstance(metrics, MetricRecord) or msg.content.array_records:
        return Problem(
            "reply-malformed",
            f"an evaluate reply holds exactly one MetricRecord '{wire.METRICS}' and no arrays",
        )
    return _metrics_problem(metrics, EVALUATE_METRICS)


def majority_signature(replies: list[Message]) -> Signature:
    """The commonest array signature among the replies (used when no global model was seen)."""
    seen: Counter[Signature] = Counter()
    for msg in replies:
        arrays = _only(msg, ArrayRecord)
        if isinstance(arrays, ArrayRecord):
            try:
                seen[signature(arrays)] += 1
            except (TypeError, ValueError):
                continue
    return seen.most_common(1)[0][0] if seen else ()


def capped_weights(claims: Mapping[int, float], max_ratio: float) -> dict[int, float]:
    """Each node's aggregation weight: its claim clamped into [m / r, m × r].

    m is the lower median of the round's claims (a minority cannot move it; with two nodes it
    is the smaller claim), r = `max_ratio` ≥ 1 (RunConfig `max-weight-ratio`; 1 makes every
    weight equal).
    """
    if not claims:
        return {}
    ordered = sorted(claims.values())
    m = ordered[(len(ordered) - 1) // 2]
    return {node: min(max(w, m / max_ratio), m * max_ratio) for node, w in claims.items()}


def claimed_examples(msg: Message) -> float:
    """The reply's num-examples (validated replies only: one finite positive number)."""
    metrics = msg.content[wire.METRICS]
    value = metrics[wire.NUM_EXAMPLES] if isinstance(metrics, MetricRecord) else 0.0
    return float(value) if isinstance(value, int | float) else 0.0
