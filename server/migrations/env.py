"""Alembic environment for the coordinator database.

Two ways in: `server.registry` passes an open connection (config.attributes["connection"]) so the
upgrade runs inside its transaction and lock; the alembic CLI passes a URL (-x url=..., the ini's
sqlalchemy.url, or ATOLL_REGISTRY_URL).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

import server.auth_models  # noqa: F401 - registers api_keys on Base.metadata (autogenerate)
from common.db import make_engine, parse_url
from server.registry_models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("ATOLL_REGISTRY_URL")
    )
    if not url:
        raise SystemExit(
            "no database URL: pass -x url=postgresql+psycopg://user@host/db (or sqlite:///file) "
            "or set ATOLL_REGISTRY_URL"
        )
    return url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(
        url=parse_url(_url()),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    if config.config_file_name:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
