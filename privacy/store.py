"""Open a privacy database (ledger, audit) and bring its schema up to date."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from common.db import make_engine, migrate

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def open_privacy_db(url: str) -> Engine:
    """An engine on `url` whose privacy tables exist at the newest revision."""
    engine = make_engine(url)
    migrate(engine, MIGRATIONS_DIR)
    return engine


def node_db_url(state_dir: str | Path) -> str:
    """A node's own privacy database inside its state directory."""
    return f"sqlite:///{Path(state_dir).resolve() / 'node-privacy.db'}"
