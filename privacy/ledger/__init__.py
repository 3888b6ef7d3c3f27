"""A node's privacy-budget ledger: every DP release, composed into one ε, enforced before data.

Why it exists: per-run accountants (Opacus, Flower) forget everything between runs. The ledger
records each release as a sampled-Gaussian event (noise multiplier, sample rate, steps) and
computes cumulative ε by composing the *whole* history — never by adding per-run ε values — with
the tighter of two valid accountants, min(RDP, PLD) (see `privacy.dp.epsilon`). A run first
*reserves* its projected events atomically; if that would cross the owner's policy (overall,
per task, per run, per calendar period) it is refused before the data source is opened.

Integrity: every mutation — policy set, reservation opened / closed / expired, release, refusal —
is one entry of an authenticated, append-only journal whose head is anchored outside the
database (`privacy.journal`). Everything a `Ledger` reports is rebuilt by replaying that
journal after checking every entry's MAC and the anchored head. A modified, forged, truncated,
rolled-back or replaced ledger makes it refuse to work (`LedgerUnavailable`); it never starts
again from zero on its own.

Modules: `core` (the `Ledger`), `admission` (the policy check, `BudgetRefused`), `state` (journal
payloads, the replayed state, the reports). Tables and the `Policy` model live in
`privacy.ledger_models`, the owner's request limits in `privacy.limits`.
"""

from __future__ import annotations

from privacy.journal import ANCHOR, LedgerUnavailable
from privacy.ledger.admission import BudgetRefused
from privacy.ledger.core import DB_NAME, Ledger
from privacy.ledger.state import (
    EPSILON_COVERS,
    BudgetStatus,
    PeriodBudget,
    PurposeBudget,
    RunBudget,
)
from privacy.ledger_models import PeriodCap, Policy, period_start
from privacy.limits import RequestLimits

__all__ = [
    "ANCHOR",
    "DB_NAME",
    "EPSILON_COVERS",
    "BudgetRefused",
    "BudgetStatus",
    "Ledger",
    "LedgerUnavailable",
    "PeriodBudget",
    "PeriodCap",
    "Policy",
    "PurposeBudget",
    "RequestLimits",
    "RunBudget",
    "period_start",
]
