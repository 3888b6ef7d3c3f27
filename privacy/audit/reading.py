"""Reading logs: filtered queries, JSON Lines export and import."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import (
    Engine,
    Select,
    func,
    inspect,
    select,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from common.db import (
    DatabaseURLError,
    make_engine,
    parse_url,
    safe_url,
)
from privacy.audit.canonical import AuditReadError, EngineOrURL, canonical_json, format_ts
from privacy.audit.entries import AuditEntry, _check_log_id, _db_reason, _entry
from privacy.audit_models import (
    AuditEntryRow,
)


@contextmanager
def _reading(engine_or_url: EngineOrURL) -> Iterator[Engine]:
    """An engine for reads; a URL is opened without migrating (reading never changes schemas)."""
    if isinstance(engine_or_url, Engine):
        yield engine_or_url
        return
    try:
        url = parse_url(engine_or_url)
    except DatabaseURLError as exc:
        raise AuditReadError(str(exc)) from None
    path = url.database or ""
    local_file = url.get_backend_name() == "sqlite" and not path.startswith("file:")
    if local_file and path not in {"", ":memory:"} and not Path(path).expanduser().is_file():
        raise AuditReadError(
            f"no audit database at {path}: check the --db URL (sqlite:////absolute/path.db)"
        )
    engine = make_engine(engine_or_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _read_error(engine: Engine, log_id: str, exc: SQLAlchemyError) -> AuditReadError:
    return AuditReadError(
        f"cannot read audit log '{log_id}' at {safe_url(engine.url)} ({_db_reason(exc)}); "
        "check the URL names a database written by AuditLog and that its server is running"
    )


def _match(column: Any, pattern: str) -> Any:
    """Exact match, or prefix match when `pattern` ends with '*'."""
    if not pattern.endswith("*"):
        return column == pattern
    prefix = pattern[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(prefix + "%", escape="\\")


def _select(
    log_id: str,
    *,
    since: datetime | None,
    until: datetime | None,
    actor: str | None,
    action: str | None,
    subject: str | None,
    after_seq: int,
    limit: int | None,
    newest_first: bool,
) -> Select[AuditEntryRow]:
    stmt = select(AuditEntryRow).where(AuditEntryRow.log_id == log_id)
    if since is not None:
        stmt = stmt.where(AuditEntryRow.ts >= format_ts(since))
    if until is not None:
        stmt = stmt.where(AuditEntryRow.ts < format_ts(until))
    for column, pattern in (
        (AuditEntryRow.actor, actor),
        (AuditEntryRow.action, action),
        (AuditEntryRow.subject, subject),
    ):
        if pattern is not None:
            stmt = stmt.where(_match(column, pattern))
    if after_seq:
        stmt = stmt.where(AuditEntryRow.seq > after_seq)
    if newest_first:
        stmt = stmt.order_by(AuditEntryRow.seq.desc(), AuditEntryRow.id.desc())
    else:
        stmt = stmt.order_by(AuditEntryRow.seq, AuditEntryRow.id)
    return stmt.limit(limit) if limit is not None else stmt


def iter_entries(
    engine_or_url: EngineOrURL,
    log_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
    subject: str | None = None,
    after_seq: int = 0,
    limit: int | None = None,
    newest_first: bool = False,
) -> Iterator[AuditEntry]:
    """Stream entries in seq order; `since` inclusive, `until` exclusive; `x*` matches a prefix."""
    stmt = _select(
        log_id,
        since=since,
        until=until,
        actor=actor,
        action=action,
        subject=subject,
        after_seq=after_seq,
        limit=limit,
        newest_first=newest_first,
    )
    with _reading(engine_or_url) as engine, Session(engine) as session:
        try:
            for row in session.scalars(stmt.execution_options(yield_per=500)):
                yield _entry(row)
        except SQLAlchemyError as exc:
            raise _read_error(engine, log_id, exc) from None


def _no_table(engine: Engine) -> bool:
    return not inspect(engine).has_table(AuditEntryRow.__tablename__)


def log_length(engine_or_url: EngineOrURL, log_id: str) -> int:
    """How many entries `log_id` holds (0 for a database or table that does not exist yet)."""
    _check_log_id(log_id)
    if isinstance(engine_or_url, str):
        try:
            url = parse_url(engine_or_url)
        except DatabaseURLError as exc:
            raise AuditReadError(str(exc)) from None
        path = url.database or ""
        if (
            url.get_backend_name() == "sqlite"
            and path not in {"", ":memory:"}
            and not path.startswith("file:")
            and not Path(path).expanduser().is_file()
        ):
            return 0
    with _reading(engine_or_url) as engine:
        try:
            if _no_table(engine):
                return 0
            with engine.connect() as conn:
                count = conn.scalar(select(func.count()).where(AuditEntryRow.log_id == log_id))
        except SQLAlchemyError as exc:
            raise _read_error(engine, log_id, exc) from None
    return int(count or 0)


def list_log_ids(engine_or_url: EngineOrURL) -> list[str]:
    """Every log id with at least one entry in the database, sorted."""
    with _reading(engine_or_url) as engine:
        try:
            if _no_table(engine):
                return []
            with engine.connect() as conn:
                ids = conn.scalars(select(AuditEntryRow.log_id).distinct()).all()
        except SQLAlchemyError as exc:
            raise _read_error(engine, "*", exc) from None
    return sorted(ids)


def query(
    engine_or_url: EngineOrURL,
    log_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
    subject: str | None = None,
    after_seq: int = 0,
    limit: int | None = 1000,
    newest_first: bool = False,
) -> list[AuditEntry]:
    """Entries matching every given filter (see `iter_entries`), at most `limit`."""
    return list(
        iter_entries(
            engine_or_url,
            log_id,
            since=since,
            until=until,
            actor=actor,
            action=action,
            subject=subject,
            after_seq=after_seq,
            limit=limit,
            newest_first=newest_first,
        )
    )


def write_jsonl(entries: Iterable[AuditEntry], out: TextIO) -> int:
    """Write entries as JSON Lines; returns how many."""
    count = 0
    for entry in entries:
        out.write(canonical_json(entry.to_json_dict()) + "\n")
        count += 1
    return count


def export_jsonl(
    engine_or_url: EngineOrURL,
    log_id: str,
    out: Path | TextIO,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
    subject: str | None = None,
    limit: int | None = None,
) -> int:
    """Export matching entries as JSON Lines to a path or open text file; returns the count.

    An unfiltered export can be verified offline with `read_jsonl` + `verify_entries`.
    """
    entries = iter_entries(
        engine_or_url,
        log_id,
        since=since,
        until=until,
        actor=actor,
        action=action,
        subject=subject,
        limit=limit,
    )
    if not isinstance(out, Path):
        return write_jsonl(entries, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="ascii") as f:
        return write_jsonl(entries, f)


def read_jsonl(path: Path) -> Iterator[AuditEntry]:
    """Entries of a JSON Lines export, in file order."""
    try:
        with Path(path).open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield AuditEntry.from_json_dict(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    raise AuditReadError(
                        f"{path} line {number} is not an audit entry; pass a file written by "
                        "`atoll audit export`"
                    ) from None
    except OSError as exc:
        raise AuditReadError(f"cannot read {path}: {exc.strerror}") from None
