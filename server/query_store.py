"""The coordinator's analytics tables. `analytics_queries`: what was asked, who answered with
what ε, and the result with its 95% intervals (`server.analytics` writes it, the CLI and API read
it); `analytics_submissions`: queries submitted through the API (`server.query_jobs`);
`drift_checks`: models' reference histograms and drift checks (`server.drift`). Light on imports
(no Flower), and one module, so importing any of them puts all three on `Base.metadata`.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Index, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from common.db import JSONType, UTCDateTime, make_engine, migrate, utcnow
from server.registry import MIGRATIONS_DIR
from server.registry_models import Base


class QueryRecord(Base):
    """One query: what was asked, who answered with what ε, and the result with intervals."""

    __tablename__ = "analytics_queries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # answered | failed
    contract_name: Mapped[str] = mapped_column(String(100))
    contract_hash: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    nodes: Mapped[dict[str, Any]] = mapped_column(JSONType)  # name → status, ε, noise or reason
    result: Mapped[dict[str, Any]] = mapped_column(JSONType)  # rows: cell, statistic, interval
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_id": self.run_id,
            "kind": self.kind,
            "status": self.status,
            "contract": {"name": self.contract_name, "hash": self.contract_hash},
            "spec": self.spec,
            "nodes": self.nodes,
            "result": self.result,
            "created_at": self.created_at.isoformat(),
        }


class QueryStore:
    """The coordinator database's `analytics_queries` (opening it migrates the database)."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._owned = True
        migrate(self.engine, MIGRATIONS_DIR)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_engine(cls, engine: Engine) -> QueryStore:
        """On an engine the caller owns and has migrated (e.g. the registry's); `close` leaves
        it open."""
        store = cls.__new__(cls)
        store.engine, store._owned = engine, False
        store._sessions = sessionmaker(engine, expire_on_commit=False)
        return store

    def add(self, **fields: Any) -> int:
        with self._sessions() as s, s.begin():
            row = QueryRecord(created_at=utcnow(), **fields)
            s.add(row)
            s.flush()
            return int(row.id)

    def get(self, query_id: int) -> QueryRecord | None:
        with self._sessions() as s:
            return s.get(QueryRecord, query_id)

    def by_run(self, run_id: str) -> QueryRecord | None:
        with self._sessions() as s:
            q = select(QueryRecord).where(QueryRecord.run_id == run_id).order_by(QueryRecord.id)
            return s.scalars(q).first()

    def all(self, limit: int = 100) -> list[QueryRecord]:
        with self._sessions() as s:
            q = select(QueryRecord).order_by(QueryRecord.id.desc()).limit(limit)
            return list(s.scalars(q).all())

    def close(self) -> None:
        if self._owned:
            self.engine.dispose()


class SubmissionRecord(Base):
    """A query submitted through the API: who asked what, and where its result is."""

    __tablename__ = "analytics_submissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16))  # queued | running | answered | failed
    submitted_by: Mapped[str] = mapped_column(String(100))  # the API key id
    contract_hash: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    query_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "submitted_by": self.submitted_by,
            "contract_hash": self.contract_hash,
            "spec": self.spec,
            "run_id": self.run_id,
            "query_id": self.query_id,
            "error": self.error,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


class DriftRecord(Base):
    __tablename__ = "drift_checks"
    __table_args__ = (Index("ix_drift_checks_model", "model_name", "model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # reference | check
    contract_hash: Mapped[str] = mapped_column(String(64))
    histograms: Mapped[dict[str, Any]] = mapped_column(JSONType)
    report: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": {"name": self.model_name, "version": self.model_version},
            "kind": self.kind,
            "contract_hash": self.contract_hash,
            "histograms": self.histograms,
            "report": self.report,
            "created_at": self.created_at.isoformat(),
        }


ROW_FIELDS = ("cell", "statistic", "estimate", "low", "high", "noisy_count", "unreliable")


def rows_csv(record: dict[str, Any]) -> str:
    """A stored query's result rows as CSV (cell keys joined by ' × ')."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(ROW_FIELDS)
    for r in record["result"].get("rows", []):
        writer.writerow([" × ".join(r["cell"]) if f == "cell" else r[f] for f in ROW_FIELDS])
    return buf.getvalue()
