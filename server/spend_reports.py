"""Coordinator-side record of what each node reported spending (or refusing) per run.

The node's own ledger is the authority; this is the federation-wide view governance reads.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from common.db import utcnow
from privacy.ledger_models import SpendReport
from privacy.store import open_privacy_db


class SpendReports:
    def __init__(self, url: str) -> None:
        self.engine = open_privacy_db(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_engine(cls, engine: Engine) -> SpendReports:
        """Over an already-migrated privacy engine (the API shares one)."""
        self = cls.__new__(cls)
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        return self

    def close(self) -> None:
        self.engine.dispose()

    def record(
        self,
        *,
        run_id: str,
        node: str,
        task: str,
        status: str,
        metrics: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        m = metrics or {}
        with self._sessions() as s, s.begin():
            row = s.scalars(
                select(SpendReport).where(SpendReport.run_id == run_id, SpendReport.node == node)
            ).first()
            if row is None:
                row = SpendReport(run_id=run_id, node=node, task=task, created_at=utcnow())
                s.add(row)
            row.status = status
            row.reason = reason
            row.epsilon_run = _num(m.get("epsilon"))
            row.epsilon_total = _num(m.get("epsilon-total"))
            row.cap = _num(m.get("epsilon-cap"))
            row.delta = _num(m.get("delta"))

    def rows(self, run_id: str | None = None, node: str | None = None) -> list[SpendReport]:
        q = select(SpendReport).order_by(SpendReport.id)
        if run_id is not None:
            q = q.where(SpendReport.run_id == run_id)
        if node is not None:
            q = q.where(SpendReport.node == node)
        with self._sessions() as s:
            return list(s.scalars(q).all())


def _num(v: Any) -> float | None:
    return None if v is None else float(v)
