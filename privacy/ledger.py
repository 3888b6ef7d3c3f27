"""A node's privacy-budget ledger: every DP release, composed into one ε, enforced before data.

Why it exists: per-run accountants (Opacus, Flower) forget everything between runs. The ledger
records each release as a sampled-Gaussian event (noise multiplier, sample rate, steps) and
computes cumulative ε by composing the *whole* history — never by adding per-run ε values — with
the tighter of two valid accountants, min(RDP, PLD) (see `privacy.dp.epsilon`). A run first
*reserves* its projected events atomically; if that would cross the owner's policy (overall,
per task, per run, per calendar period) it is refused before the data source is opened.

Integrity: events are hash-chained and the database is paired with an anchor file written at
initialisation. A broken chain, a missing database or a mismatched anchor make the ledger
refuse to work; it never starts again from zero on its own.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from common.db import SQLITE_BEGIN_OPTION, utcnow
from privacy.audit import AuditLog, AuditSigner
from privacy.dp import ACCOUNTANT, PlannedEvent, epsilon
from privacy.ledger_models import LedgerEvent, LedgerMeta, PolicyVersion, Refusal, Reservation
from privacy.store import open_privacy_db

ANCHOR = "ledger.anchor.json"
DB_NAME = "node-privacy.db"
GENESIS = "0" * 64
_LOCK_KEY = 0x4C45444745  # "LEDGE": PostgreSQL advisory lock for reservations


class LedgerUnavailable(RuntimeError):
    """The ledger is missing, uninitialised or fails its integrity check: do not train."""


class BudgetRefused(RuntimeError):
    """A request would break the owner's policy; carries the numbers that decided it."""

    def __init__(
        self,
        code: str,
        message: str,
        requested: float | None = None,
        remaining: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.requested = requested
        self.remaining = remaining


class PeriodCap(BaseModel):
    """A cap on ε spent within one UTC calendar period: it limits the pace, not the total."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    period: Literal["month", "quarter", "year"]
    epsilon: float = Field(gt=0, description="Most ε the releases of one period may compose to")


def period_start(period: str, now: datetime) -> datetime:
    """Start (UTC midnight) of the calendar month, quarter or year that contains `now`."""
    now = now.astimezone(UTC)
    month = {"month": now.month, "quarter": 3 * ((now.month - 1) // 3) + 1, "year": 1}[period]
    return datetime(now.year, month, 1, tzinfo=UTC)


class Policy(BaseModel):
    """Set by the data owner on the node; nothing the coordinator sends can change it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cap_epsilon: float = Field(gt=0, description="Cap on cumulative ε over everything, at delta")
    delta: float = Field(1e-5, gt=0, lt=1)
    max_run_epsilon: float | None = Field(None, gt=0, description="Most one run may take")
    task_caps: dict[str, float] = Field(default_factory=dict, description="Per-task ε caps")
    allowed_tasks: list[str] | None = Field(None, description="None: any task in the contract")
    allowed_purposes: list[str] = Field(default_factory=lambda: ["training", "evaluation"])
    reservation_hours: float = Field(24.0, gt=0, description="Unfinished runs release after this")
    period_cap: PeriodCap | None = Field(
        None, description="Also cap ε per UTC calendar period (pace); the overall cap still binds"
    )


class RunBudget(BaseModel):
    run_id: str
    task: str
    purpose: str
    status: str
    planned_epsilon: float
    spent_epsilon: float
    created_at: datetime


class PeriodBudget(BaseModel):
    """The current calendar period under a period cap: releases since `start`, plus held."""

    period: str
    start: datetime
    cap_epsilon: float
    spent_epsilon: float
    reserved_epsilon: float
    remaining_epsilon: float


class BudgetStatus(BaseModel):
    node: str
    delta: float
    accountant: str = ACCOUNTANT  # which bound every ε here is
    cap_epsilon: float
    spent_epsilon: float
    reserved_epsilon: float
    remaining_epsilon: float
    per_task: dict[str, float]
    events: int
    runs: list[RunBudget]
    policy: Policy
    period: PeriodBudget | None = None


def _event_hash(fields: dict[str, Any]) -> str:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(body.encode()).hexdigest()


def _hash_fields(e: LedgerEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "run_id": e.run_id,
        "round": e.round,
        "task": e.task,
        "purpose": e.purpose,
        "mechanism": e.mechanism,
        "noise_multiplier": repr(float(e.noise_multiplier)),
        "sample_rate": repr(float(e.sample_rate)),
        "steps": int(e.steps),
        "created_at": e.created_at.astimezone(UTC).isoformat(),
        "prev_hash": e.prev_hash,
    }


def _history(events: Iterable[LedgerEvent]) -> list[tuple[float, float, int]]:
    return [(e.noise_multiplier, e.sample_rate, e.steps) for e in events]


class Ledger:
    """The ledger in `state_dir` (database + anchor). Open it with `Ledger(state_dir)`."""

    def __init__(self, state_dir: str | Path, *, url: str | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        anchor = self.state_dir / ANCHOR
        db = self.state_dir / DB_NAME
        if not anchor.exists():
            raise LedgerUnavailable(
                f"no privacy ledger in {self.state_dir}: the node owner must run "
                "`atoll budget init` (with a cap) before this node can train"
            )
        if url is None and not db.exists():
            raise LedgerUnavailable(
                f"privacy ledger database {db} is missing although the ledger was initialised; "
                "restore it from backup — the node will not start again from zero"
            )
        self.engine: Engine = open_privacy_db(url or f"sqlite:///{db}")
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            anchored = json.loads(anchor.read_text())["ledger_id"]
        except (OSError, ValueError, KeyError):
            raise LedgerUnavailable(f"ledger anchor {anchor} is unreadable; restore it") from None
        with self._sessions() as s:
            meta = s.scalars(select(LedgerMeta)).all()
        if len(meta) != 1 or meta[0].ledger_id != anchored:
            raise LedgerUnavailable(
                f"ledger database in {self.state_dir} does not belong to its anchor "
                "(replaced or reset); restore the original database"
            )
        self.node_name = meta[0].node_name
        self.verify()

    # -- set-up ----------------------------------------------------------------------------
    @classmethod
    def initialize(
        cls, state_dir: str | Path, node_name: str, policy: Policy, *, url: str | None = None
    ) -> Ledger:
        """Create a new, empty ledger; refuses if one (or a trace of one) is already there."""
        state = Path(state_dir).resolve()
        anchor, db = state / ANCHOR, state / DB_NAME
        if anchor.exists() or (url is None and db.exists()):
            raise LedgerUnavailable(
                f"a privacy ledger already exists in {state}; it can only be continued, not reset"
            )
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = open_privacy_db(url or f"sqlite:///{db}")
        ledger_id = str(uuid.uuid4())
        with sessionmaker(engine)() as s, s.begin():
            if s.scalar(select(func.count()).select_from(LedgerMeta)):
                raise LedgerUnavailable(
                    "that database already holds a ledger; use it, not a new one"
                )
            s.add(LedgerMeta(ledger_id=ledger_id, node_name=node_name, created_at=utcnow()))
            s.add(PolicyVersion(policy=policy.model_dump(), set_by="init", created_at=utcnow()))
        engine.dispose()
        anchor.write_text(json.dumps({"ledger_id": ledger_id, "node": node_name}))
        return cls(state, url=url)

    def close_db(self) -> None:
        self.engine.dispose()

    def audit_log(self) -> AuditLog:
        """The node's own signed audit log; it lives beside the ledger in the same database."""
        key = AuditSigner.load_or_create(self.state_dir / "audit-key" / "audit.pem")
        return AuditLog(self.engine, f"node:{self.node_name}", key)

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One serialised write transaction (SQLite write lock / PostgreSQL advisory lock)."""
        with self._sessions() as s, s.begin():
            conn = s.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
            yield s

    # -- integrity -------------------------------------------------------------------------
    def verify(self) -> int:
        """Recompute the hash chain; raise LedgerUnavailable at the first bad event."""
        with self._sessions() as s:
            events = s.scalars(select(LedgerEvent).order_by(LedgerEvent.seq)).all()
            policies = s.scalars(select(PolicyVersion)).all()
        prev = GENESIS
        for i, e in enumerate(events, start=1):
            if e.seq != i or e.prev_hash != prev or _event_hash(_hash_fields(e)) != e.hash:
                raise LedgerUnavailable(
                    f"privacy ledger integrity check failed at event {i} "
                    f"(modified, deleted or reordered); restore the ledger from backup"
                )
            prev = e.hash
        if not policies:
            raise LedgerUnavailable("privacy ledger has no policy; run `atoll budget policy`")
        for p in policies:
            try:
                Policy.model_validate(p.policy)
            except ValidationError:
                raise LedgerUnavailable(f"stored policy {p.id} is invalid; set a new one") from None
        return len(events)

    # -- policy ----------------------------------------------------------------------------
    def policy(self, session: Session | None = None) -> Policy:
        def read(s: Session) -> Policy:
            row = s.scalars(select(PolicyVersion).order_by(PolicyVersion.id.desc()).limit(1)).one()
            return Policy.model_validate(row.policy)

        if session is not None:
            return read(session)
        with self._sessions() as s:
            return read(s)

    def set_policy(self, policy: Policy, set_by: str = "owner") -> None:
        with self._write() as s:
            s.add(PolicyVersion(policy=policy.model_dump(), set_by=set_by, created_at=utcnow()))

    # -- accounting ------------------------------------------------------------------------
    @staticmethod
    def _unspent(res: Reservation, spent: list[LedgerEvent]) -> list[tuple[float, float, int]]:
        """Planned steps of an active reservation not yet turned into events."""
        left: dict[tuple[float, float], int] = defaultdict(int)
        for sigma, q, steps, _purpose in res.planned:
            left[(float(sigma), float(q))] += int(steps)
        for e in spent:
            if e.run_id == res.run_id:
                left[(e.noise_multiplier, e.sample_rate)] -= e.steps
        return [(k[0], k[1], n) for k, n in left.items() if n > 0]

    def _committed(
        self, s: Session, task: str | None = None, since: datetime | None = None
    ) -> tuple[list[tuple[float, float, int]], list[tuple[float, float, int]]]:
        """(spent events, unspent parts of active reservations), optionally for one task.

        With `since`, only events released from then on count as spent; held parts always
        count, since they can only be released from now on.
        """
        events = s.scalars(select(LedgerEvent).order_by(LedgerEvent.seq)).all()
        active = s.scalars(select(Reservation).where(Reservation.status == "active")).all()
        if task is not None:
            events = [e for e in events if e.task == task]
            active = [r for r in active if r.task == task]
        held = [ev for r in active for ev in self._unspent(r, list(events))]
        if since is not None:
            events = [e for e in events if e.created_at >= since]
        return _history(events), held

    def epsilon(self, task: str | None = None, include_reserved: bool = False) -> float:
        """Cumulative ε at the policy's δ of every release (plus held reservations if asked)."""
        with self._sessions() as s:
            delta = self.policy(s).delta
            spent, held = self._committed(s, task)
        return epsilon(spent + (held if include_reserved else []), delta)

    def run_epsilon(self, run_id: str) -> float:
        """ε of one run's releases alone (what a model card reports for this node)."""
        with self._sessions() as s:
            delta = self.policy(s).delta
            events = s.scalars(select(LedgerEvent).where(LedgerEvent.run_id == run_id)).all()
        return epsilon(_history(events), delta)

    # -- the protocol: reserve → record* → close ------------------------------------------
    def planned(self, run_id: str) -> list[PlannedEvent] | None:
        """The events a run reserved (None if it has no reservation)."""
        with self._sessions() as s:
            res = s.scalars(select(Reservation).where(Reservation.run_id == run_id)).first()
        if res is None:
            return None
        return [PlannedEvent(float(a), float(b), int(c), str(d)) for a, b, c, d in res.planned]

    def reserve(self, run_id: str, task: str, purpose: str, planned: list[PlannedEvent]) -> float:
        """Hold budget for a whole run, or raise BudgetRefused (and record why). Idempotent."""
        try:
            with self._write() as s:
                existing = s.scalars(
                    select(Reservation).where(Reservation.run_id == run_id)
                ).first()
                if existing is not None:
                    if existing.status != "active":
                        raise BudgetRefused(
                            "closed", f"run {run_id} already finished on this node; start a new run"
                        )
                    return existing.planned_epsilon
                self._expire(s)
                planned_eps = self._check(s, self.policy(s), task, purpose, planned)
                s.add(
                    Reservation(
                        run_id=run_id,
                        task=task,
                        purpose=purpose,
                        status="active",
                        planned=[list(p) for p in planned],
                        planned_epsilon=planned_eps,
                        created_at=utcnow(),
                    )
                )
                return planned_eps
        except BudgetRefused as refusal:
            self._record_refusal(run_id, task, purpose, refusal)
            raise

    def _check(
        self, s: Session, policy: Policy, task: str, purpose: str, planned: list[PlannedEvent]
    ) -> float:
        purposes = {p.purpose for p in planned} | {purpose}
        if not purposes <= set(policy.allowed_purposes):
            bad = ", ".join(sorted(purposes - set(policy.allowed_purposes)))
            raise BudgetRefused("purpose", f"purpose {bad} is not allowed by this node's policy")
        if policy.allowed_tasks is not None and task not in policy.allowed_tasks:
            raise BudgetRefused("task", f"task '{task}' is not allowed by this node's policy")
        history = [(p.noise_multiplier, p.sample_rate, p.steps) for p in planned]
        run_eps = epsilon(history, policy.delta)
        if policy.max_run_epsilon is not None and run_eps > policy.max_run_epsilon:
            raise BudgetRefused(
                "run-cap",
                f"this run would spend ε={run_eps:.3f} but one run may take at most "
                f"ε={policy.max_run_epsilon:.3f} (δ={policy.delta:g}); "
                f"difference {run_eps - policy.max_run_epsilon:.3f}",
                requested=run_eps,
                remaining=policy.max_run_epsilon,
            )
        caps: list[tuple[str | None, float]] = [(None, policy.cap_epsilon)]
        if task in policy.task_caps:
            caps.append((task, policy.task_caps[task]))
        for scope, cap in caps:
            now, after = self._projected(s, history, policy.delta, task=scope)
            if after > cap:
                where = f"task '{scope}'" if scope else "this node"
                raise BudgetRefused(
                    "cap",
                    f"budget exceeded for {where}: the run needs ε={run_eps:.3f} "
                    f"(cumulative would be {after:.3f}) but only {max(cap - now, 0):.3f} of "
                    f"the cap {cap:.3f} remains (δ={policy.delta:g}); "
                    f"difference {after - cap:.3f}",
                    requested=after,
                    remaining=max(cap - now, 0.0),
                )
        if policy.period_cap is not None:
            pc = policy.period_cap
            start = period_start(pc.period, utcnow())
            now, after = self._projected(s, history, policy.delta, since=start)
            if after > pc.epsilon:
                raise BudgetRefused(
                    "period-cap",
                    f"budget for this {pc.period} (since {start:%Y-%m-%d} UTC) exceeded: the run "
                    f"needs ε={run_eps:.3f} (this {pc.period}'s cumulative would be {after:.3f}) "
                    f"but only {max(pc.epsilon - now, 0):.3f} of the {pc.period}ly cap "
                    f"{pc.epsilon:.3f} remains (δ={policy.delta:g}); "
                    f"difference {after - pc.epsilon:.3f}",
                    requested=after,
                    remaining=max(pc.epsilon - now, 0.0),
                )
        return run_eps

    def _projected(
        self,
        s: Session,
        history: list[tuple[float, float, int]],
        delta: float,
        task: str | None = None,
        since: datetime | None = None,
    ) -> tuple[float, float]:
        """ε committed in one scope (spent + held) now, and after adding `history`."""
        spent, held = self._committed(s, task, since)
        return epsilon(spent + held, delta), epsilon(spent + held + history, delta)

    def _record_refusal(self, run_id: str, task: str, purpose: str, r: BudgetRefused) -> None:
        with self._write() as s:
            s.add(
                Refusal(
                    run_id=run_id,
                    task=task,
                    purpose=purpose,
                    code=r.code,
                    requested_epsilon=r.requested,
                    remaining_epsilon=r.remaining,
                    message=str(r),
                    created_at=utcnow(),
                )
            )

    def _expire(self, s: Session) -> None:
        policy = self.policy(s)
        cutoff = utcnow() - timedelta(hours=policy.reservation_hours)
        for r in s.scalars(select(Reservation).where(Reservation.status == "active")).all():
            if r.created_at < cutoff:
                r.status, r.closed_at = "expired", utcnow()

    def record(
        self, run_id: str, round_: int, purpose: str, noise: float, rate: float, steps: int
    ) -> float:
        """Append one release that the run's reservation covers; returns the run's ε so far."""
        if steps <= 0:
            return self.run_epsilon(run_id)
        with self._write() as s:
            res = s.scalars(select(Reservation).where(Reservation.run_id == run_id)).first()
            if res is None or res.status != "active":
                raise BudgetRefused("no-reservation", f"run {run_id} holds no active reservation")
            events = s.scalars(select(LedgerEvent).order_by(LedgerEvent.seq)).all()
            left = {(q[0], q[1]): q[2] for q in self._unspent(res, list(events))}
            if left.get((float(noise), float(rate)), 0) < steps:
                raise BudgetRefused(
                    "over-reservation",
                    f"release of {steps} steps (noise {noise:g}, rate {rate:g}) is not covered "
                    f"by run {run_id}'s reservation; nothing is sent",
                )
            prev = events[-1].hash if events else GENESIS
            e = LedgerEvent(
                seq=len(events) + 1,
                run_id=run_id,
                round=round_,
                task=res.task,
                purpose=purpose,
                mechanism="sampled_gaussian",
                noise_multiplier=float(noise),
                sample_rate=float(rate),
                steps=int(steps),
                created_at=utcnow(),
                prev_hash=prev,
                hash="",
            )
            e.hash = _event_hash(_hash_fields(e))
            s.add(e)
        return self.run_epsilon(run_id)

    def close(self, run_id: str) -> float:
        """End a run: what it did not spend goes back to the budget. Returns its ε."""
        with self._write() as s:
            res = s.scalars(select(Reservation).where(Reservation.run_id == run_id)).first()
            if res is not None and res.status == "active":
                res.status, res.closed_at = "closed", utcnow()
        return self.run_epsilon(run_id)

    # -- reporting -------------------------------------------------------------------------
    def status(self) -> BudgetStatus:
        with self._sessions() as s:
            policy = self.policy(s)
            spent, held = self._committed(s)
            events = s.scalars(select(LedgerEvent).order_by(LedgerEvent.seq)).all()
            runs = s.scalars(select(Reservation).order_by(Reservation.id)).all()
            period = self._period_status(s, policy)
        spent_eps = epsilon(spent, policy.delta)
        committed = epsilon(spent + held, policy.delta)
        tasks = sorted({e.task for e in events})
        per_task = {
            t: epsilon(_history(e for e in events if e.task == t), policy.delta) for t in tasks
        }
        run_rows = [
            RunBudget(
                run_id=r.run_id,
                task=r.task,
                purpose=r.purpose,
                status=r.status,
                planned_epsilon=r.planned_epsilon,
                spent_epsilon=epsilon(
                    _history(e for e in events if e.run_id == r.run_id), policy.delta
                ),
                created_at=r.created_at,
            )
            for r in runs
        ]
        return BudgetStatus(
            node=self.node_name,
            delta=policy.delta,
            cap_epsilon=policy.cap_epsilon,
            spent_epsilon=spent_eps,
            reserved_epsilon=max(committed - spent_eps, 0.0),
            remaining_epsilon=max(policy.cap_epsilon - committed, 0.0),
            per_task=per_task,
            events=len(events),
            runs=run_rows,
            policy=policy,
            period=period,
        )

    def _period_status(self, s: Session, policy: Policy) -> PeriodBudget | None:
        if policy.period_cap is None:
            return None
        pc = policy.period_cap
        start = period_start(pc.period, utcnow())
        spent, held = self._committed(s, since=start)
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
        with self._sessions() as s:
            rows = s.scalars(select(Refusal).order_by(Refusal.id)).all()
        return [
            {
                "run_id": r.run_id,
                "task": r.task,
                "purpose": r.purpose,
                "code": r.code,
                "requested_epsilon": r.requested_epsilon,
                "remaining_epsilon": r.remaining_epsilon,
                "message": r.message,
                "at": r.created_at.isoformat(),
            }
            for r in rows
        ]
