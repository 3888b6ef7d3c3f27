"""Database plumbing shared by node and coordinator stores: engines and Alembic migrations.

SQLite for one machine, PostgreSQL for a deployment.

SQLite is tuned so several processes (coordinator publishing, API reading) can share one file:
WAL journal, foreign keys, a busy timeout, and real transactions (pysqlite's implicit BEGIN is
replaced by our own so DDL is transactional and writers can ask for BEGIN IMMEDIATE).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import JSON, DateTime, Engine, create_engine, event, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, Connection, Dialect, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from common.errors import AtollError

SQLITE_BUSY_TIMEOUT_MS = 10_000
# Execution option read by the SQLite "begin" hook: "IMMEDIATE" takes the write lock up front so
# read-then-write transactions (publish: max(version) + 1) serialize instead of failing.
SQLITE_BEGIN_OPTION = "atoll_sqlite_begin"
_SQLITE_BEGIN_MODES = {"DEFERRED", "IMMEDIATE", "EXCLUSIVE"}


class DatabaseURLError(AtollError, ValueError):
    """A registry URL is malformed or names an unsupported database."""


def default_registry_url(home: Path) -> str:
    """The registry of a single-machine install: a SQLite file under the Atoll home directory."""
    return f"sqlite:///{(Path(home).expanduser().resolve() / 'registry.db').as_posix()}"


def parse_url(url: str) -> URL:
    """Parse and normalise a registry URL; PostgreSQL always uses the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseURLError(
            "registry URL is not a valid SQLAlchemy URL: use sqlite:///path/registry.db or "
            "postgresql+psycopg://user@host:5432/dbname"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed
    if backend in {"postgresql", "postgres"}:
        return parsed.set(drivername="postgresql+psycopg")
    raise DatabaseURLError(
        f"registry URL uses unsupported database '{backend}': use sqlite:/// or "
        "postgresql+psycopg://"
    )


def safe_url(url: str | URL) -> str:
    """The URL with any password masked, for logs and error messages."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except ArgumentError:
        return "<unparsable URL>"
    return parsed.render_as_string(hide_password=True)


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory / URI-style databases."""
    database = url.database or ""
    if database in {"", ":memory:"} or database.startswith("file:") or url.query.get("uri"):
        return None
    return Path(database).expanduser()


def _install_sqlite_hooks(engine: Engine) -> None:
    """Per-connection pragmas and explicit BEGIN (see module docstring for why)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, in the "begin" hook
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = str(conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")).upper()
        if mode not in _SQLITE_BEGIN_MODES:
            raise ValueError(f"{SQLITE_BEGIN_OPTION} must be one of {sorted(_SQLITE_BEGIN_MODES)}")
        conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str) -> Engine:
    """An engine for a registry URL (sqlite:///file, sqlite:// in memory, or PostgreSQL)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    path = _sqlite_file(parsed)
    connect_args: dict[str, Any] = {"check_same_thread": False}
    if path is None:
        # One shared connection, or each session would see its own empty in-memory database.
        engine = create_engine(parsed, connect_args=connect_args, poolclass=StaticPool)
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseURLError(
                f"cannot create the directory for the registry database '{path}': "
                f"{exc.strerror}; choose a writable location"
            ) from None
        connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_MS / 1000
        engine = create_engine(parsed, connect_args=connect_args)
    _install_sqlite_hooks(engine)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose loaded objects stay readable after commit (they are returned to callers)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


_MIGRATION_LOCK_KEY = 0x41544F4C4C  # "ATOLL": PostgreSQL advisory lock serialising migrations


def migrate(engine: Engine, script_location: Path) -> None:
    """Bring a database to the newest revision(s) of one Alembic environment, one process at a time.

    Each environment (registry, privacy stores) keeps its own version table, so a coordinator
    database can hold several and a node database only the ones it needs.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location).replace("%", "%%"))
    with engine.connect() as conn:
        conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")


# ---- column types shared by every Atoll table --------------------------------------------------
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact); plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite drops the zone; we restore it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column: pass an aware datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)
