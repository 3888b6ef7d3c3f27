"""Tables of a node's privacy-budget ledger (in the node's own database).

`ledger_events` is append-only and hash-chained: each DP release the node made, as a mechanism
event. Reservations hold budget for a whole run before any data is read; refusals are kept too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from common.db import UTCDateTime, utcnow
from privacy.models import PrivacyBase


class LedgerMeta(PrivacyBase):
    """One row: which ledger this is (matched against the anchor file beside the database)."""

    __tablename__ = "ledger_meta"
    ledger_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node_name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PolicyVersion(PrivacyBase):
    """The data owner's budget policy; append-only, the newest row is in force."""

    __tablename__ = "ledger_policies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    policy: Mapped[dict[str, Any]] = mapped_column()
    set_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Reservation(PrivacyBase):
    """Budget held for one run: the projected events of the whole run, checked before data."""

    __tablename__ = "ledger_reservations"
    __table_args__ = (UniqueConstraint("run_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(32))
    planned: Mapped[list[Any]] = mapped_column()  # [[noise, rate, steps, purpose], ...]
    planned_epsilon: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))  # active | closed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class LedgerEvent(PrivacyBase):
    """One DP release (a round's DP-SGD steps, or a noised evaluation)."""

    __tablename__ = "ledger_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64))
    round: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(32))
    mechanism: Mapped[str] = mapped_column(String(32))  # sampled_gaussian
    noise_multiplier: Mapped[float] = mapped_column(Float)
    sample_rate: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Refusal(PrivacyBase):
    """A request the node refused, with the numbers that decided it."""

    __tablename__ = "ledger_refusals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(32))
    code: Mapped[str] = mapped_column(String(32))
    requested_epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    remaining_epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


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
