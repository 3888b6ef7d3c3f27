"""Alembic environment for the privacy stores (ledger, audit chain).

`privacy.store.open_privacy_db` passes an open connection; the alembic CLI passes `-x url=...`.
Its own version table keeps it independent of the registry's migrations in a shared database.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from common.db import make_engine
from privacy.models import PrivacyBase

config = context.config
VERSION_TABLE = "alembic_version_privacy"


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=PrivacyBase.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit(
            "no database URL: pass -x url=sqlite:///node-privacy.db (or postgresql+psycopg://...)"
        )
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


run_online()
