"""What a node's ledger knows, replayed from its verified journal: payloads, state, reports.

Each journal entry's payload is one model below, by kind (`init` is the journal's own genesis).
`LedgerState.replay` folds the entries in order — linear in their number — into the policy in
force, the reservations with what is left of them, the releases and the refusals; a Ledger
answers every question from that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from common.errors import AtollError
from privacy.dp import ACCOUNTANT
from privacy.journal_format import Entry, Genesis
from privacy.ledger_models import Policy

# What the ledger's ε accounts for (shown by `atoll budget show`): every release a node makes.
EPSILON_COVERS = (
    "DP-SGD training steps (sampled Gaussian, per round)",
    "noised evaluation histograms (Gaussian, per round)",
    "analytics queries (Gaussian, one release per query)",
)


# ---- what the ledger reports --------------------------------------------------------------------


class RunBudget(BaseModel):
    run_id: str
    task: str
    purpose: str
    status: str  # active | closed | expired
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


class PurposeBudget(BaseModel):
    """One purpose under a per-purpose cap: its releases (and sub-purposes'), plus held."""

    purpose: str
    cap_epsilon: float
    spent_epsilon: float
    reserved_epsilon: float
    remaining_epsilon: float


class BudgetStatus(BaseModel):
    node: str
    delta: float
    accountant: str = ACCOUNTANT  # which bound every ε here is
    covers: list[str] = Field(default_factory=lambda: list(EPSILON_COVERS))  # what ε accounts
    cap_epsilon: float
    spent_epsilon: float
    reserved_epsilon: float
    remaining_epsilon: float
    per_task: dict[str, float]
    events: int
    runs: list[RunBudget]
    policy: Policy
    period: PeriodBudget | None = None
    purposes: list[PurposeBudget] = Field(default_factory=list)  # one per purpose cap


# ---- journal payloads (one model per entry kind) ------------------------------------------------


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicySet(_Payload):
    """kind `policy`: the owner's policy from now on."""

    policy: Policy
    set_by: str


class Reserved(_Payload):
    """kind `reserve`: budget held for the whole run (its projected releases)."""

    task: str
    purpose: str
    planned: list[tuple[float, float, int, str]]  # (noise, rate, steps, purpose)
    planned_epsilon: float


class Released(_Payload):
    """kind `release`: one DP release (a round's DP-SGD steps, or a noised evaluation)."""

    round: int
    task: str
    purpose: str
    mechanism: Literal["sampled_gaussian"] = "sampled_gaussian"
    noise_multiplier: float
    sample_rate: float
    steps: int = Field(gt=0)


class Ended(_Payload):
    """kinds `close` and `expire`: the run's unspent reservation goes back to the budget."""


class Refused(_Payload):
    """kind `refusal`: a request refused, with the numbers that decided it."""

    task: str
    purpose: str
    code: str
    requested_epsilon: float | None
    remaining_epsilon: float | None
    message: str


def finite(value: float | None) -> float | None:
    """A number the journal's JSON can hold (non-finite becomes None)."""
    return value if value is None or math.isfinite(value) else None


# ---- the state a verified journal replays into --------------------------------------------------

History = list[tuple[float, float, int]]  # (noise multiplier, sample rate, steps) per event


class CorruptEntry(AtollError, ValueError):
    """An authenticated entry that does not make sense where it stands (names the entry)."""

    def __init__(self, seq: int, kind: str, problem: str) -> None:
        super().__init__(f"entry {seq} ({kind}) {problem}")


@dataclass
class RunState:
    """A reservation and what is left of it."""

    run_id: str
    task: str
    purpose: str
    planned: list[tuple[float, float, int, str]]  # (noise, rate, steps, purpose)
    planned_epsilon: float
    created_at: datetime
    status: str = "active"  # active | closed | expired
    left: dict[tuple[float, float], int] = field(default_factory=dict)  # unspent steps
    left_by_purpose: dict[tuple[float, float, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class Release:
    run_id: str
    task: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    at: datetime
    purpose: str = ""


@dataclass(frozen=True)
class RefusalRecord:
    run_id: str
    refused: Refused
    at: datetime


@dataclass
class LedgerState:
    """Everything the ledger knows, folded from its journal entry by entry (linear in entries)."""

    node: str = ""
    seq: int = 0
    policy_or_none: Policy | None = None
    runs: dict[str, RunState] = field(default_factory=dict)  # in reservation order
    releases: list[Release] = field(default_factory=list)
    refusals: list[RefusalRecord] = field(default_factory=list)

    @classmethod
    def replay(cls, entries: Iterable[Entry]) -> LedgerState:
        """The state after `entries` (already verified); CorruptEntry if one makes no sense."""
        state = cls()
        for entry in entries:
            state.apply(entry)
        if state.policy_or_none is None:
            raise CorruptEntry(state.seq, "head", "ends a journal that never set a policy")
        return state

    @property
    def policy(self) -> Policy:
        assert self.policy_or_none is not None, "replay() guarantees a policy"
        return self.policy_or_none

    def apply(self, e: Entry) -> None:
        try:
            self._apply(e)
        except CorruptEntry:
            raise
        except ValueError:  # a payload model's ValidationError, or a malformed timestamp
            raise CorruptEntry(e.seq, e.kind, "holds a payload this version cannot read") from None
        self.seq = e.seq

    def _apply(self, e: Entry) -> None:
        run = self.runs.get(e.run_id or "")
        if e.kind == "init":
            self.node = Genesis.model_validate_json(e.payload).node
        elif e.kind == "policy":
            self.policy_or_none = PolicySet.model_validate_json(e.payload).policy
        elif e.kind == "refusal":
            refused = Refused.model_validate_json(e.payload)
            self.refusals.append(RefusalRecord(e.run_id or "", refused, e.timestamp))
        elif e.kind == "reserve":
            if run is not None or not e.run_id:
                raise CorruptEntry(e.seq, e.kind, "reserves for a run that already has one")
            self._reserve(e.run_id, Reserved.model_validate_json(e.payload), e.timestamp)
        elif run is None or run.status != "active":
            raise CorruptEntry(e.seq, e.kind, f"refers to run {e.run_id} without a reservation")
        elif e.kind == "release":
            self._release(run, Released.model_validate_json(e.payload), e.timestamp)
        elif e.kind in ("close", "expire"):
            Ended.model_validate_json(e.payload)
            run.status = "closed" if e.kind == "close" else "expired"
        else:
            raise CorruptEntry(e.seq, e.kind, "is of a kind this version does not know")

    def _reserve(self, run_id: str, r: Reserved, at: datetime) -> None:
        run = RunState(run_id, r.task, r.purpose, list(r.planned), r.planned_epsilon, at)
        for noise, rate, steps, purpose in r.planned:
            run.left[(noise, rate)] = run.left.get((noise, rate), 0) + steps
            by = (noise, rate, purpose)
            run.left_by_purpose[by] = run.left_by_purpose.get(by, 0) + steps
        self.runs[run_id] = run

    def _release(self, run: RunState, r: Released, at: datetime) -> None:
        key = (r.noise_multiplier, r.sample_rate)
        run.left[key] = run.left.get(key, 0) - r.steps
        by = (*key, r.purpose)
        run.left_by_purpose[by] = run.left_by_purpose.get(by, 0) - r.steps
        rel = Release(
            run.run_id, run.task, r.noise_multiplier, r.sample_rate, r.steps, at, r.purpose
        )
        self.releases.append(rel)

    # -- queries ---------------------------------------------------------------------------------
    def run_history(self, run_id: str) -> History:
        return [_event(r) for r in self.releases if r.run_id == run_id]

    def committed(
        self, task: str | None = None, since: datetime | None = None, purpose: str | None = None
    ) -> tuple[History, History]:
        """(spent events, unspent parts of active reservations), optionally for one task or one
        purpose (with its sub-purposes, see `in_purpose`).

        With `since`, only releases from then on count as spent; held parts always count, since
        they can only be released from now on.
        """
        spent = [
            _event(r)
            for r in self.releases
            if (task is None or r.task == task)
            and (since is None or r.at >= since)
            and (purpose is None or in_purpose(r.purpose, purpose))
        ]
        active = [
            run
            for run in self.runs.values()
            if run.status == "active" and (task is None or run.task == task)
        ]
        if purpose is None:
            held = [(k[0], k[1], n) for run in active for k, n in run.left.items() if n > 0]
        else:
            held = [
                (k[0], k[1], n)
                for run in active
                for k, n in run.left_by_purpose.items()
                if n > 0 and in_purpose(k[2], purpose)
            ]
        return spent, held


def in_purpose(purpose: str, scope: str) -> bool:
    """Does a release of `purpose` count against a cap on `scope` (itself, or `scope/…`)?"""
    return purpose == scope or purpose.startswith(scope + "/")


def _event(r: Release) -> tuple[float, float, int]:
    return (r.noise_multiplier, r.sample_rate, r.steps)
