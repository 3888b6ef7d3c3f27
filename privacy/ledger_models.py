"""Tables of a node's privacy-budget ledger, and the owner's policy (light: no DP libraries).

`ledger_journal` is the ledger: one append-only, HMAC-chained entry per mutation (see
`privacy.journal`); everything else a node knows — the policy in force, reservations, releases,
refusals — is replayed from it (`privacy.ledger.state`). `privacy_spend_reports` is the
coordinator's view (not part of a node's ledger). The older `ledger_*` tables of migration p001
stay in the schema unused, so a database that still holds an old-format ledger can be recognised
(and refused) instead of misread.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from common.db import UTCDateTime, utcnow
from privacy.limits import RequestLimits
from privacy.models import PrivacyBase


class JournalRow(PrivacyBase):
    """One authenticated journal entry; `mac` chains it to the previous one (`prev_mac`)."""

    __tablename__ = "ledger_journal"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON, exactly as authenticated
    created_at: Mapped[str] = mapped_column(String(27))  # fixed-width UTC text, authenticated
    prev_mac: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))


class SpendReport(PrivacyBase):
    """Coordinator side: what each node reported spending (or refusing) in each run."""

    __tablename__ = "privacy_spend_reports"
    __table_args__ = (UniqueConstraint("run_id", "node"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(100))
    task: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # participated | refused | failed
    epsilon_run: Mapped[float | None] = mapped_column(Float, nullable=True)
    epsilon_total: Mapped[float | None] = mapped_column(Float, nullable=True)
    cap: Mapped[float | None] = mapped_column(Float, nullable=True)
    delta: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# ---- the owner's policy -------------------------------------------------------------------------


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
    purpose_caps: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict,
        description="Per-purpose ε caps (e.g. analytics apart from training): a cap on P binds "
        "the releases of purpose P and of its sub-purposes P/…; the overall cap still binds",
    )
    limits: RequestLimits = Field(
        default_factory=RequestLimits,
        description="What one coordinator request may ask of this node, checked before data",
    )

    def allows(self, purpose: str) -> bool:
        """Is `purpose` allowed: listed, or a sub-purpose (`P/…`) of a listed purpose P?"""
        return any(purpose == p or purpose.startswith(p + "/") for p in self.allowed_purposes)
