"""Whether a run's planned releases fit the owner's policy, decided before any data is read.

Checks, in order: allowed purposes (allowing P allows its sub-purposes P/…) and task, the
per-run cap, the overall and per-task caps, the per-purpose caps (a cap on `analytics` binds
`analytics` and `analytics/…` releases) and the calendar-period cap — each on the composed ε
of everything spent or held in its scope plus this run's releases in that scope.
"""

from __future__ import annotations

from datetime import datetime

from common.errors import AtollError
from privacy.dp import PlannedEvent, epsilon
from privacy.ledger.state import History, LedgerState, in_purpose
from privacy.ledger_models import period_start


class BudgetRefused(AtollError, RuntimeError):
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


def check(
    state: LedgerState, task: str, purpose: str, planned: list[PlannedEvent], at: datetime
) -> float:
    """ε of the planned run (at time `at`), or BudgetRefused naming the rule and the numbers."""
    policy = state.policy
    purposes = {p.purpose for p in planned} | {purpose}
    if not all(policy.allows(p) for p in purposes):
        bad = ", ".join(sorted(p for p in purposes if not policy.allows(p)))
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
        now, after = projected(state, history, task=scope)
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
    for scope, cap in sorted(policy.purpose_caps.items()):
        _check_purpose(state, scope, cap, planned)
    if policy.period_cap is not None:
        pc = policy.period_cap
        start = period_start(pc.period, at)
        now, after = projected(state, history, since=start)
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


def _check_purpose(state: LedgerState, scope: str, cap: float, planned: list[PlannedEvent]) -> None:
    """BudgetRefused if this run's releases of purpose `scope` (or `scope/…`) would take that
    purpose's composed ε over the owner's cap for it."""
    mine = [
        (p.noise_multiplier, p.sample_rate, p.steps)
        for p in planned
        if in_purpose(p.purpose, scope)
    ]
    if not mine:
        return
    delta = state.policy.delta
    now, after = projected(state, mine, purpose=scope)
    if after > cap:
        needs = epsilon(mine, delta)
        raise BudgetRefused(
            "purpose-cap",
            f"budget exceeded for purpose '{scope}': this run's {scope} releases need "
            f"ε={needs:.3f} (the purpose's cumulative would be {after:.3f}) but only "
            f"{max(cap - now, 0):.3f} of its cap {cap:.3f} remains (δ={delta:g}); "
            f"difference {after - cap:.3f}",
            requested=after,
            remaining=max(cap - now, 0.0),
        )


def projected(
    state: LedgerState,
    history: History,
    task: str | None = None,
    since: datetime | None = None,
    purpose: str | None = None,
) -> tuple[float, float]:
    """ε committed in one scope (spent + held) now, and after adding `history`."""
    spent, held = state.committed(task, since, purpose)
    delta = state.policy.delta
    return epsilon(spent + held, delta), epsilon(spent + held + history, delta)
