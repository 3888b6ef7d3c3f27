"""What may already be there when a ledger is opened or created: an old-format ledger, or any.

The first ledger format (migration p001) kept hash-chained `ledger_events` beside unchained
policy and reservation rows, and an anchor holding only the ledger id. Nothing in it is
authenticated, so it is neither trusted nor converted: it is recognised and refused with a clear
way forward. Its tables stay in the schema (unused) for exactly this.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from privacy.journal import LedgerUnavailable
from privacy.ledger_models import JournalRow

_LEGACY_TABLES = ("ledger_meta", "ledger_events")


def old_format(state_dir: Path) -> LedgerUnavailable:
    return LedgerUnavailable(
        f"privacy ledger in {state_dir} is in the old format (hash-chained events without an "
        "authenticated journal), which this version cannot trust or continue; this node refuses "
        "to train until it is replaced. Keep that state directory as the record of what was "
        "spent, and create a new ledger in a new state directory with `atoll budget init`, "
        "lowering its cap by the ε the old ledger shows"
    )


def old_anchor(path: Path) -> bool:
    """The old anchor held only the ledger id and node, no head."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # missing or unreadable: the journal says so
    return isinstance(raw, dict) and "ledger_id" in raw and "head_seq" not in raw


def _legacy_rows(session: Session) -> bool:
    return any(
        session.execute(text(f"SELECT 1 FROM {table} LIMIT 1")).first() is not None
        for table in _LEGACY_TABLES
    )


def _journal_rows(session: Session) -> bool:
    return session.execute(select(JournalRow.seq).limit(1)).first() is not None


def refuse_old_database(session: Session, state_dir: Path) -> None:
    """LedgerUnavailable if the database holds an old-format ledger and no journal."""
    if not _journal_rows(session) and _legacy_rows(session):
        raise old_format(state_dir)


def holds_ledger(session: Session) -> bool:
    """Does this database already hold a ledger (a journal, or one of the old format)?"""
    return _journal_rows(session) or _legacy_rows(session)
