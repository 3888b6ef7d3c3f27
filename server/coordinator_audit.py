"""The coordinator's signed audit log: runs, roll calls, every reply received, publications.

Writes go to the coordinator database (log id "coordinator"); a failed write raises and so
aborts the run — an action is never taken unrecorded. Entries hold names, counts, digests and ε.

Every run's trail ends in `run.finished` or `run.failed`, written by its ServerApp — unless that
process was killed. `close_abandoned_runs` runs when the SuperLink starts (no ServerApp of this
coordinator is alive then) and ends each such trail with `run.abandoned`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from flwr.app import Message, MetricRecord, MetricRecordValues

from common import wire
from privacy.audit import (
    AuditLog,
    Checkpointer,
    CheckpointPolicy,
    digest_arrays,
    iter_entries,
    json_number,
)

LOG_ID = "coordinator"
ACTOR = "service:coordinator"
RUN_ENDS = ("run.finished", "run.failed", "run.abandoned")


def _number(metrics: Mapping[str, MetricRecordValues], key: str, default: float = 0) -> float:
    """A scalar metric as float; a list (which a MetricRecord may hold) fails as float() would."""
    value = metrics.get(key, default)
    if isinstance(value, list):
        raise TypeError(f"metric '{key}' must be a single number, not a list")
    return float(value)


def default_key_path() -> Path:
    return Path.home() / ".atoll" / "coordinator-audit.pem"


class CoordinatorAudit:
    def __init__(
        self, url: str, key_path: str | Path, run_id: str, checkpoint_dir: Path | None = None
    ) -> None:
        self.key_path = Path(key_path) if key_path else default_key_path()
        self.log = AuditLog.open(url, LOG_ID, self.key_path)  # never re-created for a used log
        self.run_id = run_id
        self.names: dict[int, str] = {}
        self.checkpoints = (
            Checkpointer(
                self.log.engine, [LOG_ID], self.log.signer, CheckpointPolicy(checkpoint_dir)
            )
            if checkpoint_dir is not None
            else None
        )

    def __call__(self, action: str, subject: str | None = None, **details: Any) -> None:
        self.log.append(ACTOR, action, subject or f"run:{self.run_id}", details)

    def checkpoint(self) -> list[Path]:
        """A signed (count, last hash) in the coordinator's checkpoint directory, extending the
        previous one: truncation below it is detectable, and a log found truncated or rewritten
        gets no new checkpoint (the error is logged; the last good one keeps exposing it)."""
        return self.checkpoints.run_due(force=True) if self.checkpoints is not None else []

    def reply(self, server_round: int, kind: str, msg: Message) -> None:
        """One reply as received: who sent it (the SuperLink's node id), its update digest, ε."""
        node = msg.metadata.src_node_id
        name = self.names.get(node, f"node-id:{node}")
        refusal = wire.refusal_of(msg)
        if refusal is not None:
            self(
                "round.refused",
                run=self.run_id,
                round=server_round,
                node=name,
                kind=kind,
                node_id=node,
                code=refusal.code[:64],
                reason=refusal.message[:500],
            )
            return
        metrics: dict[str, MetricRecordValues] = (
            dict(cast(MetricRecord, msg.content[wire.METRICS]))
            if wire.METRICS in msg.content
            else {}
        )
        arrays = msg.content.get(wire.ARRAYS) if kind == "train" else None
        epsilon = metrics.get(wire.BUDGET_KEYS["epsilon_run"])
        self(
            "round.reply",
            run=self.run_id,
            round=server_round,
            node=name,
            kind=kind,
            node_id=node,
            update_sha256=digest_arrays(arrays) if arrays is not None else None,
            epsilon=json_number(float(epsilon)) if isinstance(epsilon, int | float) else None,
        )


def close_abandoned_runs(url: str, key_path: str | Path) -> list[str]:
    """End the trail of every run that started but has no end entry: one `run.abandoned` each.

    Call it only while no ServerApp of this coordinator runs (when the SuperLink starts): a run
    without an end then is one whose ServerApp was killed (crash, OOM, power). Returns the run
    ids it closed, oldest first; a second call closes nothing.
    """
    key = Path(key_path) if key_path else default_key_path()
    with AuditLog.open(url, LOG_ID, key) as log:
        ended = {e.subject for a in RUN_ENDS for e in iter_entries(log.engine, LOG_ID, action=a)}
        started = list(iter_entries(log.engine, LOG_ID, action="run.started"))
        closed: list[str] = []
        for entry in started:
            if entry.subject in ended or not entry.subject.startswith("run:"):
                continue
            ended.add(entry.subject)
            run_id = entry.subject.removeprefix("run:")
            log.append(
                ACTOR,
                "run.abandoned",
                entry.subject,
                {
                    "run": run_id,
                    "started_seq": entry.seq,
                    "reason": "no end entry when the SuperLink started: the run's ServerApp "
                    "stopped without recording one (killed or crashed)",
                },
            )
            closed.append(run_id)
    return closed
