"""The Ledger: a node's budget, enforced, over its authenticated journal (see the package doc)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from common.db import utcnow
from privacy.audit import AuditLog
from privacy.dp import PlannedEvent, epsilon
from privacy.journal import (
    ANCHOR,
    KEY_FILE,
    RESTORE,
    Journal,
    JournalWriter,
    LedgerUnavailable,
    in_use,
)
from privacy.journal_format import Entry
from privacy.ledger.admission import BudgetRefused, check
from privacy.ledger.legacy import holds_ledger, old_anchor, old_format, refuse_old_database
from privacy.ledger.state import (
    BudgetStatus,
    CorruptEntry,
    Ended,
    LedgerState,
    PeriodBudget,
    PolicySet,
    PurposeBudget,
    Refused,
    Released,
    Reserved,
    RunBudget,
    RunState,
    finite,
)
from privacy.ledger_models import Policy, period_start
from privacy.store import open_privacy_db

DB_NAME = "node-privacy.db"


@dataclass
class _Tx:
    """One serialised write: the verified state, and entries appended to journal and state."""

    writer: JournalWriter
    state: LedgerState

    def append(self, kind: str, run_id: str | None, payload: BaseModel) -> int:
        entry = self.writer.append(kind, run_id, payload, utcnow())
        self.state.apply(entry)
        return entry.seq

    def refusal(self, run_id: str, task: str, purpose: str, r: BudgetRefused) -> None:
        requested, remaining = finite(r.requested), finite(r.remaining)
        refused = Refused(
            task=task,
            purpose=purpose,
            code=r.code,
            message=str(r),
            requested_epsilon=requested,
            remaining_epsilon=remaining,
        )
        self.append("refusal", run_id, refused)


class Ledger:
    """The ledger in `state_dir` (key, anchor, and by default its database). `Ledger(state_dir)`."""

    def __init__(self, state_dir: str | Path, *, url: str | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        anchor, db = self.state_dir / ANCHOR, self.state_dir / DB_NAME
        if not anchor.exists():
            if (self.state_dir / KEY_FILE).exists() or (url is None and db.exists()):
                raise LedgerUnavailable(
                    f"privacy ledger in {self.state_dir}: its anchor {ANCHOR} is missing although "
                    f"the ledger exists; {RESTORE}"
                )
            raise LedgerUnavailable(
                f"no privacy ledger in {self.state_dir}: the node owner must run "
                "`atoll budget init` (with a cap) before this node can train"
            )
        if url is None and not db.exists():
            raise LedgerUnavailable(
                f"privacy ledger database {db} is missing although the ledger was initialised; "
                f"{RESTORE}"
            )
        if old_anchor(anchor):
            raise old_format(self.state_dir)
        self._journal = Journal.open(self.state_dir)
        self._cache: tuple[str, LedgerState] | None = None
        self.engine: Engine = open_privacy_db(url or f"sqlite:///{db}")
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            with self._sessions() as s:
                refuse_old_database(s, self.state_dir)
                verified = self._journal.read(s)
            if verified.ahead:  # committed, then a crash before the anchor was moved
                self._journal.roll_forward(self._sessions)
            self.node_name = self._replay(verified.entries).node
        except BaseException:
            self.engine.dispose()
            raise

    # -- set-up ----------------------------------------------------------------------------
    @classmethod
    def initialize(
        cls, state_dir: str | Path, node_name: str, policy: Policy, *, url: str | None = None
    ) -> Ledger:
        """Create a new, empty ledger; refuses if one (or a trace of one) is already there."""
        state = Path(state_dir).resolve()
        if url is None and (state / DB_NAME).exists():
            raise LedgerUnavailable(
                f"a privacy ledger already exists in {state}; it can only be continued, not reset"
            )
        Journal.ensure_absent(state)  # before the database is created or touched
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = open_privacy_db(url or f"sqlite:///{state / DB_NAME}")
        try:
            with Session(engine) as s:
                if holds_ledger(s):  # checked before any file is created in the state dir
                    raise in_use()
            journal = Journal.create(state, node_name)
            with journal.write(sessionmaker(engine), genesis=utcnow()) as w:
                w.append("policy", None, PolicySet(policy=policy, set_by="init"), utcnow())
        finally:
            engine.dispose()
        ledger = cls(state, url=url)
        ledger._audit_policy(policy, "init", seq=2, initial=True)
        return ledger

    def close_db(self) -> None:
        self.engine.dispose()

    def audit_log(self) -> AuditLog:
        """The node's own signed audit log; it lives beside the ledger in the same database."""
        return AuditLog.open(
            self.engine, f"node:{self.node_name}", self.state_dir / "audit-key" / "audit.pem"
        )  # a lost key is never re-created for a log that already has entries

    def _audit_policy(self, policy: Policy, set_by: str, *, seq: int, initial: bool) -> None:
        details: dict[str, object] = {
            "policy": policy.model_dump(mode="json"),
            "set_by": set_by,
            "journal_seq": seq,
        }
        if initial:
            details["initial"] = True
        with self.audit_log() as log:
            log.append(f"node:{self.node_name}", "policy.changed", "ledger", details)

    # -- the journal, replayed -------------------------------------------------------------
    def _replay(self, entries: list[Entry], *, for_write: bool = False) -> LedgerState:
        """The state after the verified `entries`.

        Reads share one cached state per head (the head mac commits to the whole chain); a write
        gets a fresh state of its own, which it mutates.
        """
        head = entries[-1].mac if entries else ""
        cached = self._cache
        if not for_write and cached is not None and cached[0] == head:
            return cached[1]
        try:
            state = LedgerState.replay(entries)
        except CorruptEntry as err:
            raise self._journal.refuse(f"integrity check failed: {err}") from None
        if not for_write:
            self._cache = (head, state)
        return state

    def _state(self, session: Session | None = None) -> LedgerState:
        """The verified journal, replayed (reads never move the anchor; writers do)."""
        if session is not None:
            return self._replay(self._journal.read(session).entries)
        with self._sessions() as s:
            return self._state(s)

    @contextmanager
    def _write(self) -> Iterator[_Tx]:
        """One serialised write transaction; the anchor moves right after it commits."""
        with self._journal.write(self._sessions) as writer:
            yield _Tx(writer, self._replay(list(writer.entries), for_write=True))

    def verify(self) -> int:
        """Check every entry's MAC, the chain and the anchored head; returns the entry count."""
        return self._state().seq

    # -- policy ----------------------------------------------------------------------------
    def policy(self, session: Session | None = None) -> Policy:
        return self._state(session).policy

    def set_policy(self, policy: Policy, set_by: str = "owner") -> None:
        """Put a new policy in force (journalled, and recorded in the node's audit log)."""
        with self._write() as tx:
            seq = tx.append("policy", None, PolicySet(policy=policy, set_by=set_by))
        self._audit_policy(policy, set_by, seq=seq, initial=False)

    # -- accounting ------------------------------------------------------------------------
    def epsilon(self, task: str | None = None, include_reserved: bool = False) -> float:
        """Cumulative ε at the policy's δ of every release (plus held reservations if asked)."""
        state = self._state()
        spent, held = state.committed(task)
        return epsilon(spent + (held if include_reserved else []), state.policy.delta)

    def run_epsilon(self, run_id: str) -> float:
        """ε of one run's releases alone (what a model card reports for this node)."""
        state = self._state()
        return epsilon(state.run_history(run_id), state.policy.delta)

    # -- the protocol: reserve → record* → close ------------------------------------------
    def planned(self, run_id: str) -> list[PlannedEvent] | None:
        """The events a run reserved (None if it has no reservation)."""
        run = self._state().runs.get(run_id)
        return None if run is None else [PlannedEvent(*p) for p in run.planned]

    def reserve(self, run_id: str, task: str, purpose: str, planned: list[PlannedEvent]) -> float:
        """Hold budget for a whole run, or raise BudgetRefused (and record why). Idempotent."""
        refused: BudgetRefused | None = None
        with self._write() as tx:
            existing = tx.state.runs.get(run_id)
            if existing is not None and existing.status == "active":
                return existing.planned_epsilon
            if existing is not None:
                refused = BudgetRefused(
                    "closed", f"run {run_id} already finished on this node; start a new run"
                )
            else:
                self._expire(tx)
                try:
                    planned_eps = check(tx.state, task, purpose, planned, utcnow())
                except BudgetRefused as refusal:
                    refused = refusal
            if refused is not None:
                tx.refusal(run_id, task, purpose, refused)  # committed with any expiries
            else:
                plan = [(float(p[0]), float(p[1]), int(p[2]), str(p[3])) for p in planned]
                reserved = Reserved(
                    task=task, purpose=purpose, planned=plan, planned_epsilon=planned_eps
                )
                tx.append("reserve", run_id, reserved)
        if refused is not None:
            raise refused
        return planned_eps

    @staticmethod
    def _expire(tx: _Tx) -> None:
        cutoff = utcnow() - timedelta(hours=tx.state.policy.reservation_hours)
        for run in list(tx.state.runs.values()):
            if run.status == "active" and run.created_at < cutoff:
                tx.append("expire", run.run_id, Ended())

    def record(
        self, run_id: str, round_: int, purpose: str, noise: float, rate: float, steps: int
    ) -> None:
        """Append one release that the run's reservation covers (ε is the accountant's, on
        demand: `run_epsilon`, `status`; computing it here would cost a fresh accounting per
        release that nobody reads).

        A release the reservation does not cover is refused (and the refusal journalled).
        """
        if steps <= 0:
            return
        with self._write() as tx:
            run = tx.state.runs.get(run_id)
            refused = self._uncovered(run_id, run, noise, rate, steps)
            if refused is not None:
                tx.refusal(run_id, run.task if run else "", purpose, refused)
            else:
                assert run is not None
                released = Released(
                    round=round_,
                    task=run.task,
                    purpose=purpose,
                    noise_multiplier=float(noise),
                    sample_rate=float(rate),
                    steps=int(steps),
                )
                tx.append("release", run_id, released)
        if refused is not None:
            raise refused

    @staticmethod
    def _uncovered(
        run_id: str, run: RunState | None, noise: float, rate: float, steps: int
    ) -> BudgetRefused | None:
        """Why the run's reservation does not cover this release (None: it does)."""
        if run is None or run.status != "active":
            return BudgetRefused("no-reservation", f"run {run_id} holds no active reservation")
        if run.left.get((float(noise), float(rate)), 0) < steps:
            return BudgetRefused(
                "over-reservation",
                f"release of {steps} steps (noise {noise:g}, rate {rate:g}) is not covered "
                f"by run {run_id}'s reservation; nothing is sent",
            )
        return None

    def close(self, run_id: str) -> float:
        """End a run: what it did not spend goes back to the budget. Returns its ε."""
        with self._write() as tx:
            run = tx.state.runs.get(run_id)
            if run is not None and run.status == "active":
                tx.append("close", run_id, Ended())
            history, delta = tx.state.run_history(run_id), tx.state.policy.delta
        return epsilon(history, delta)

    # -- reporting -------------------------------------------------------------------------
    def status(self) -> BudgetStatus:
        state = self._state()
        policy = state.policy
        spent, held = state.committed()
        spent_eps = epsilon(spent, policy.delta)
        committed = epsilon(spent + held, policy.delta)
        tasks = sorted({r.task for r in state.releases})
        per_task = {t: epsilon(state.committed(t)[0], policy.delta) for t in tasks}
        runs = [
            RunBudget(
                run_id=r.run_id,
                task=r.task,
                purpose=r.purpose,
                status=r.status,
                planned_epsilon=r.planned_epsilon,
                spent_epsilon=epsilon(state.run_history(r.run_id), policy.delta),
                created_at=r.created_at,
            )
            for r in state.runs.values()
        ]
        return BudgetStatus(
            node=state.node,
            delta=policy.delta,
            cap_epsilon=policy.cap_epsilon,
            spent_epsilon=spent_eps,
            reserved_epsilon=max(committed - spent_eps, 0.0),
            remaining_epsilon=max(policy.cap_epsilon - committed, 0.0),
            per_task=per_task,
            events=len(state.releases),
            runs=runs,
            policy=policy,
            period=self._period_status(state),
            purposes=[
                self._purpose_status(state, scope, cap)
                for scope, cap in sorted(policy.purpose_caps.items())
            ],
        )

    @staticmethod
    def _purpose_status(state: LedgerState, scope: str, cap: float) -> PurposeBudget:
        spent, held = state.committed(purpose=scope)
        delta = state.policy.delta
        spent_eps, committed = epsilon(spent, delta), epsilon(spent + held, delta)
        return PurposeBudget(
            purpose=scope,
            cap_epsilon=cap,
            spent_epsilon=spent_eps,
            reserved_epsilon=max(committed - spent_eps, 0.0),
            remaining_epsilon=max(cap - committed, 0.0),
        )

    @staticmethod
    def _period_status(state: LedgerState) -> PeriodBudget | None:
        policy = state.policy
        if policy.period_cap is None:
            return None
        pc = policy.period_cap
        start = period_start(pc.period, utcnow())
        spent, held = state.committed(since=start)
        spent_eps = epsilon(spent, policy.delta)
        committed = epsilon(spent + held, policy.delta)
        return PeriodBudget(
            period=pc.period,
            start=start,
            cap_epsilon=pc.epsilon,
            spent_epsilon=spent_eps,
            reserved_epsilon=max(committed - spent_eps, 0.0),
            remaining_epsilon=max(pc.epsilon - committed, 0.0),
        )

    def refusals(self) -> list[dict[str, Any]]:
        return [
            {
                "run_id": r.run_id,
                "task": r.refused.task,
                "purpose": r.refused.purpose,
                "code": r.refused.code,
                "requested_epsilon": r.refused.requested_epsilon,
                "remaining_epsilon": r.refused.remaining_epsilon,
                "message": r.refused.message,
                "at": r.at.isoformat(),
            }
            for r in self._state().refusals
        ]
