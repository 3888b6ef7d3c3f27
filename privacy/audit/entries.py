"""One audit entry: its checked fields and how it is stored and read back."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from common.db import (
    SQLITE_BEGIN_OPTION,
    DatabaseURLError,
    safe_url,
)
from privacy.audit.canonical import (
    _ACTION,
    _CONTROL,
    _LOG_ID,
    GENESIS_HASH,
    MAX_DETAILS_BYTES,
    TS_FORMAT,
    AuditError,
    AuditWriteError,
    EngineOrURL,
    _flat,
    _plain,
    canonical_json,
)
from privacy.audit_models import (
    ACTION_LENGTH,
    ACTOR_LENGTH,
    LOG_ID_LENGTH,
    SUBJECT_LENGTH,
    AuditEntryRow,
)
from privacy.store import open_privacy_db


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry as stored; `ts` is the exact UTC text that was hashed."""

    log_id: str
    seq: int
    ts: str
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str
    hash: str
    signature: str
    key_id: str

    @property
    def timestamp(self) -> datetime:
        return datetime.strptime(self.ts, TS_FORMAT).replace(tzinfo=UTC)

    def to_json_dict(self) -> dict[str, Any]:
        """Every field, ready for JSON Lines (re-verifiable with `verify_entries`)."""
        return {
            "log_id": self.log_id,
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "signature": self.signature,
            "key_id": self.key_id,
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> AuditEntry:
        details = data["details"]
        return cls(
            log_id=str(data["log_id"]),
            seq=int(data["seq"]),
            ts=str(data["ts"]),
            actor=str(data["actor"]),
            action=str(data["action"]),
            subject=str(data["subject"]),
            details=details if isinstance(details, dict) else _unreadable(repr(details)),
            prev_hash=str(data["prev_hash"]),
            hash=str(data["hash"]),
            signature=str(data["signature"]),
            key_id=str(data["key_id"]),
        )


def _unreadable(raw: str) -> dict[str, Any]:
    """Stand-in for stored details that are not a JSON object: a digest, never the raw text."""
    return {"_unreadable_details_sha256": hashlib.sha256(raw.encode()).hexdigest()}


def _entry(row: AuditEntryRow) -> AuditEntry:
    try:
        details = json.loads(row.details)
    except (ValueError, TypeError):
        details = None
    return AuditEntry(
        log_id=row.log_id,
        seq=int(row.seq),
        ts=row.ts,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        details=details if isinstance(details, dict) else _unreadable(str(row.details)),
        prev_hash=row.prev_hash,
        hash=row.hash,
        signature=row.signature,
        key_id=row.key_id,
    )


def _check_name(kind: str, value: str, max_length: int, pattern: re.Pattern[str] | None) -> None:
    if not isinstance(value, str):
        raise AuditWriteError(f"audit {kind} must be a string, not {type(value).__name__}")
    if len(value) > max_length or _CONTROL.search(value):
        raise AuditWriteError(
            f"audit {kind} must be at most {max_length} printable characters "
            f"(got {len(value)} characters)"
        )
    if pattern is not None and not pattern.fullmatch(value):
        raise AuditWriteError(
            f"audit {kind} {value!r} is malformed: "
            + (
                "use dotted lowercase words, e.g. 'run.started'"
                if kind == "action"
                else "use letters, digits and ':._@/-', e.g. 'node:marketing'"
            )
        )
    if not value and kind != "subject":
        raise AuditWriteError(f"audit {kind} is empty; say who or what it is")


def _check_log_id(log_id: str) -> None:
    try:
        _check_name("log id", log_id, LOG_ID_LENGTH, _LOG_ID)
    except AuditWriteError as exc:
        raise AuditError(str(exc)) from None


def _details_json(details: Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
    plain = _flat(details)
    if plain is None:
        plain = _plain(dict(details or {}), "details")
    encoded = canonical_json(plain)
    if len(encoded) > MAX_DETAILS_BYTES:
        raise AuditWriteError(
            f"details encode to {len(encoded)} bytes (limit {MAX_DETAILS_BYTES}); record "
            "counts and digests, not data"
        )
    return plain, encoded


def _is_unique_violation(exc: IntegrityError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate == "23505" or "UNIQUE constraint failed" in str(exc.orig)


def _raw_unique_violation(exc: BaseException) -> bool:
    """A DBAPI error (not wrapped by SQLAlchemy) that is a UNIQUE violation."""
    return getattr(exc, "sqlstate", None) == "23505" or "UNIQUE constraint failed" in str(exc)


def _rollback_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.rollback()


_RAW_DIALECTS = frozenset({"sqlite", "postgresql"})


def _db_reason(exc: BaseException) -> str:
    """First line of the driver's message (schema/lock problems; never row values)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0] if lines else 'no message'}"


@contextmanager
def _locked(engine: Engine, log_id: str) -> Iterator[Connection]:
    """A transaction holding the log's writer lock (BEGIN IMMEDIATE / PostgreSQL advisory lock).

    Core statements on one connection: the ORM unit of work would double an append's cost.
    """
    with engine.connect() as conn:
        conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                    {"key": f"atoll.audit:{log_id}"},
                )
            yield conn


def _head(conn: Connection, log_id: str) -> tuple[int, str]:
    row = conn.execute(
        select(AuditEntryRow.seq, AuditEntryRow.hash)
        .where(AuditEntryRow.log_id == log_id)
        .order_by(AuditEntryRow.seq.desc())
        .limit(1)
    ).first()
    return (int(row.seq), row.hash) if row is not None else (0, GENESIS_HASH)


# The group-commit hot path speaks plain SQL to the driver: building and compiling Core
# statements costs more than running them (~0.1 ms per transaction). Same table, same columns.
_ROW_COLUMNS = (
    "log_id",
    "seq",
    "ts",
    "actor",
    "action",
    "subject",
    "details",
    "prev_hash",
    "hash",
    "signature",
    "key_id",
)


def _driver_sql(paramstyle: str) -> tuple[str, str]:
    """(head query, insert) for a DBAPI paramstyle (sqlite3: qmark; psycopg: %s)."""
    mark = "?" if paramstyle == "qmark" else "%s"
    table = AuditEntryRow.__tablename__
    head = f"SELECT seq, hash FROM {table} WHERE log_id = {mark} ORDER BY seq DESC LIMIT 1"
    columns = ", ".join(_ROW_COLUMNS)
    values = ", ".join([mark] * len(_ROW_COLUMNS))
    return head, f"INSERT INTO {table} ({columns}) VALUES ({values})"


def _writer_engine(engine_or_url: EngineOrURL) -> Engine:
    """The engine to write through: given, or the privacy database at a URL (migrated)."""
    if isinstance(engine_or_url, Engine):
        return engine_or_url
    try:
        return open_privacy_db(engine_or_url)
    except DatabaseURLError as exc:
        raise AuditWriteError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise AuditWriteError(
            f"cannot open audit database {safe_url(engine_or_url)}: {_db_reason(exc)}; "
            "check the URL and that the database server is running"
        ) from None


@dataclass(frozen=True, slots=True)
class PreparedEntry:
    """An entry's caller-given fields, checked and canonicalised (`prepare_entry`)."""

    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    encoded: str  # the canonical JSON of `details`, exactly as hashed and stored


def prepare_entry(
    actor: str, action: str, subject: str = "", details: Mapping[str, Any] | None = None
) -> PreparedEntry:
    """Check an entry's fields as `AuditLog.append` does; raises AuditWriteError if invalid."""
    _check_name("actor", actor, ACTOR_LENGTH, None)
    _check_name("action", action, ACTION_LENGTH, _ACTION)
    _check_name("subject", subject, SUBJECT_LENGTH, None)
    plain, encoded = _details_json(details)
    return PreparedEntry(actor, action, subject, plain, encoded)
