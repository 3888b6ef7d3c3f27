"""AuditLog: one append-only, hash-chained, signed log in a database."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    insert,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from common.db import (
    SQLITE_BUSY_TIMEOUT_MS,
    safe_url,
)
from privacy.audit.canonical import (
    _ACTION,
    _APPEND_ATTEMPTS,
    _ENTRY_DOMAIN,
    GENESIS_HASH,
    AuditWriteError,
    EngineOrURL,
    entry_hash,
    format_ts,
)
from privacy.audit.checkpoints import Checkpoint, export_checkpoint
from privacy.audit.entries import (
    _RAW_DIALECTS,
    AuditEntry,
    PreparedEntry,
    _check_log_id,
    _check_name,
    _db_reason,
    _details_json,
    _driver_sql,
    _head,
    _is_unique_violation,
    _locked,
    _raw_unique_violation,
    _rollback_quietly,
    _writer_engine,
    prepare_entry,
)
from privacy.audit.keys import AuditSigner
from privacy.audit_models import (
    ACTION_LENGTH,
    ACTOR_LENGTH,
    SUBJECT_LENGTH,
    AuditEntryRow,
)

log = logging.getLogger(__name__)


class AuditLog:
    """The writer of one log (`log_id`) in a privacy database, signing with `signer`.

    Pass a URL (the database is opened and migrated, and closed by `close`) or an engine from
    `privacy.store.open_privacy_db`. Safe to share between threads; several processes may write
    the same log concurrently.
    """

    def __init__(self, engine_or_url: EngineOrURL, log_id: str, signer: AuditSigner) -> None:
        _check_log_id(log_id)
        self.log_id = log_id
        self.signer = signer
        self._owns_engine = not isinstance(engine_or_url, Engine)
        self.engine = _writer_engine(engine_or_url)
        self._lock = threading.Lock()  # one in-process writer at a time: no self-contention
        self._held: Any = None  # the DBAPI connection `append_prepared` keeps (lazily)
        self._defer_checkpoints = False

    @classmethod
    def open(
        cls,
        engine_or_url: EngineOrURL,
        log_id: str,
        key_path: Path,
        *,
        pinned: Mapping[str, str] | None = None,
    ) -> AuditLog:
        """The writer of `log_id` signing with the key at `key_path`.

        The key is created only while the log is empty (first start); see
        `AuditSigner.load_or_create` for the rules, including `pinned` public keys.
        """
        _check_log_id(log_id)
        engine = _writer_engine(engine_or_url)
        owned = not isinstance(engine_or_url, Engine)
        try:
            signer = AuditSigner.load_or_create(
                key_path, engine_or_url=engine, log_id=log_id, pinned=pinned
            )
        except BaseException:
            if owned:
                engine.dispose()
            raise
        log = cls(engine, log_id, signer)
        log._owns_engine = owned
        return log

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._release_batch_connection()
        if self._owns_engine:
            self.engine.dispose()

    def append(
        self,
        actor: str,
        action: str,
        subject: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Record one action, committed and signed, or raise AuditWriteError (then fail it)."""
        _check_name("actor", actor, ACTOR_LENGTH, None)
        _check_name("action", action, ACTION_LENGTH, _ACTION)
        _check_name("subject", subject, SUBJECT_LENGTH, None)
        plain, encoded = _details_json(details)
        with self._lock:
            for attempt in range(1, _APPEND_ATTEMPTS + 1):
                try:
                    return self._append_once(actor, action, subject, plain, encoded)
                except IntegrityError as exc:
                    if not _is_unique_violation(exc) or attempt == _APPEND_ATTEMPTS:
                        raise self._write_error(action, exc) from None
                    log.warning("audit log %s: seq taken by another writer; retrying", self.log_id)
                except SQLAlchemyError as exc:
                    raise self._write_error(action, exc) from None
        raise AssertionError("unreachable")

    def _append_once(
        self, actor: str, action: str, subject: str, details: dict[str, Any], encoded: str
    ) -> AuditEntry:
        with _locked(self.engine, self.log_id) as conn:
            last_seq, prev_hash = _head(conn, self.log_id)
            seq, ts = last_seq + 1, format_ts(datetime.now(UTC))
            fields: dict[str, Any] = {
                "log_id": self.log_id,
                "seq": seq,
                "ts": ts,
                "actor": actor,
                "action": action,
                "subject": subject,
                "details": details,
                "prev_hash": prev_hash,
                "key_id": self.signer.key_id,
            }
            digest = entry_hash(**fields)
            signature = self.signer.sign(_ENTRY_DOMAIN + digest.encode("ascii")).hex()
            entry = AuditEntry(**fields, hash=digest, signature=signature)
            # The row stores `details` as the exact canonical text that was hashed.
            row = {f: getattr(entry, f) for f in AuditEntry.__slots__} | {"details": encoded}
            conn.execute(insert(AuditEntryRow).values(**row))
        return entry

    def _write_error(self, action: str, exc: SQLAlchemyError) -> AuditWriteError:
        return AuditWriteError(
            f"audit log '{self.log_id}' at {safe_url(self.engine.url)} did not record "
            f"'{action}' ({_db_reason(exc)}); the action must not proceed unrecorded — check the "
            "database is reachable, writable and migrated, then retry"
        )

    def append_many(
        self, entries: Sequence[tuple[str, str, str, Mapping[str, Any] | None]]
    ) -> list[AuditEntry]:
        """Record several actions (actor, action, subject, details) in ONE transaction, in order,
        at contiguous seqs — all committed and signed, or none (raises AuditWriteError)."""
        return self.append_prepared([prepare_entry(*entry) for entry in entries])

    def append_prepared(self, items: Sequence[PreparedEntry]) -> list[AuditEntry]:
        """`append_many` of entries already checked by `prepare_entry` (the group writer).

        On SQLite and PostgreSQL the transaction runs on one DBAPI connection this log keeps for
        batches (plain SQL: no pool checkout, no statement compilation — a third of the cost);
        a connection that fails is dropped and the batch tried once more on a fresh one.
        """
        if not items:
            return []
        with self._lock:
            entries = self._append_locked(items, wait=True)
        assert entries is not None  # waiting, it either writes or raises
        return entries

    def try_append_prepared(self, items: Sequence[PreparedEntry]) -> list[AuditEntry] | None:
        """`append_prepared` now if that needs no waiting, else None (nothing written).

        For a caller that must not block (an event loop): on SQLite the database's write lock
        is taken only if it is free at once (no busy wait), and this log's in-process lock
        likewise; another writer holding either means None — hand the batch to a
        `GroupCommitWriter` thread instead. Other databases always answer None (their commit
        waits on the network). A failure raises AuditWriteError as `append_prepared` does.
        """
        if not items or self.engine.dialect.name != "sqlite":
            return None
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._append_locked(items, wait=False)
        finally:
            self._lock.release()

    def _append_locked(
        self, items: Sequence[PreparedEntry], *, wait: bool
    ) -> list[AuditEntry] | None:
        if self.engine.dialect.name not in _RAW_DIALECTS:
            return self._append_batch_portable(items)
        reconnected = False
        attempt = 0
        while True:
            attempt += 1
            try:
                conn = self._batch_connection()
            except SQLAlchemyError as exc:
                raise self._batch_error(items, exc) from None
            try:
                return self._append_batch_raw(conn, items, wait=wait)
            except BaseException as exc:
                _rollback_quietly(conn)
                dbapi_error = self.engine.dialect.loaded_dbapi.Error
                if not isinstance(exc, dbapi_error):
                    self._drop_batch_connection()
                    raise
                if _raw_unique_violation(exc):
                    if attempt < _APPEND_ATTEMPTS:
                        log.warning(
                            "audit log %s: seq taken by another writer; retrying", self.log_id
                        )
                        continue
                elif not reconnected:  # e.g. a server restart killed the kept connection
                    reconnected = True
                    self._drop_batch_connection()
                    continue
                self._drop_batch_connection()
                raise self._batch_error(items, exc) from None

    def _append_batch_portable(self, items: Sequence[PreparedEntry]) -> list[AuditEntry]:
        for attempt in range(1, _APPEND_ATTEMPTS + 1):
            try:
                return self._append_batch_once(items)
            except IntegrityError as exc:
                if not _is_unique_violation(exc) or attempt == _APPEND_ATTEMPTS:
                    raise self._batch_error(items, exc) from None
                log.warning("audit log %s: seq taken by another writer; retrying", self.log_id)
            except SQLAlchemyError as exc:
                raise self._batch_error(items, exc) from None
        raise AssertionError("unreachable")

    def defer_wal_checkpoints(self) -> None:
        """SQLite: batch commits of this log never run a WAL checkpoint themselves (the commit
        that does waits for the page copy and an fsync — milliseconds on an event loop); the
        caller runs `checkpoint_wal` regularly (elsewhere) instead."""
        with self._lock:
            self._defer_checkpoints = True
            self._drop_batch_connection()  # the next one is opened with the setting

    def checkpoint_wal(self) -> None:
        """SQLite: copy the write-ahead log into the database (PASSIVE: never blocks writers)."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _batch_connection(self) -> Any:
        if self._held is None:
            held = self.engine.raw_connection()
            if self._defer_checkpoints and self.engine.dialect.name == "sqlite":
                cur = held.cursor()
                cur.execute("PRAGMA wal_autocheckpoint=0")
                cur.close()
            self._held = held
        return self._held

    def _drop_batch_connection(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            try:
                held.invalidate()  # never back into the pool: its state is unknown
            except Exception:  # noqa: BLE001 - it is being thrown away
                log.debug("audit log %s: discarding a failed connection", self.log_id)

    def _release_batch_connection(self) -> None:
        with self._lock:
            held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(Exception):
                held.close()  # back to the pool

    def _append_batch_raw(
        self, conn: Any, items: Sequence[PreparedEntry], *, wait: bool = True
    ) -> list[AuditEntry] | None:
        sqlite = self.engine.dialect.name == "sqlite"
        head_sql, insert_sql = _driver_sql(self.engine.dialect.paramstyle)
        cur = conn.cursor()
        try:
            if sqlite and not wait:
                cur.execute("PRAGMA busy_timeout=0")
                try:
                    cur.execute("BEGIN IMMEDIATE")
                except self.engine.dialect.loaded_dbapi.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    return None  # another process holds the write lock: do not wait here
                finally:
                    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            elif sqlite:
                cur.execute("BEGIN IMMEDIATE")  # the writers' lock, as in `_locked`
            else:
                cur.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    (f"atoll.audit:{self.log_id}",),
                )
            cur.execute(head_sql, (self.log_id,))
            head = cur.fetchone()
            last_seq, prev_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
            entries, rows = self._sign_batch(items, last_seq, prev_hash)
            cur.executemany(insert_sql, rows)
            if sqlite:
                cur.execute("COMMIT")
            else:
                conn.commit()
        finally:
            cur.close()
        return entries

    def _sign_batch(
        self, items: Sequence[PreparedEntry], last_seq: int, prev_hash: str
    ) -> tuple[list[AuditEntry], list[tuple[Any, ...]]]:
        """Entries at last_seq + 1, ... chained from prev_hash, and their rows (in column order
        of `_ROW_COLUMNS`; `details` as the exact canonical text that was hashed)."""
        entries: list[AuditEntry] = []
        rows: list[tuple[Any, ...]] = []
        key_id = self.signer.key_id
        for item in items:
            seq, ts = last_seq + 1, format_ts(datetime.now(UTC))
            digest = entry_hash(
                log_id=self.log_id,
                seq=seq,
                ts=ts,
                actor=item.actor,
                action=item.action,
                subject=item.subject,
                details=item.details,
                prev_hash=prev_hash,
                key_id=key_id,
            )
            signature = self.signer.sign(_ENTRY_DOMAIN + digest.encode("ascii")).hex()
            entries.append(
                AuditEntry(
                    self.log_id,
                    seq,
                    ts,
                    item.actor,
                    item.action,
                    item.subject,
                    item.details,
                    prev_hash,
                    digest,
                    signature,
                    key_id,
                )
            )
            rows.append(
                (self.log_id, seq, ts, item.actor, item.action, item.subject, item.encoded)
                + (prev_hash, digest, signature, key_id)
            )
            last_seq, prev_hash = seq, digest
        return entries, rows

    def _append_batch_once(self, items: Sequence[PreparedEntry]) -> list[AuditEntry]:
        """The batch through SQLAlchemy (any other database)."""
        head_sql, insert_sql = _driver_sql(self.engine.dialect.paramstyle)
        with _locked(self.engine, self.log_id) as conn:
            head = conn.exec_driver_sql(head_sql, (self.log_id,)).first()
            last_seq, prev_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
            entries, rows = self._sign_batch(items, last_seq, prev_hash)
            conn.exec_driver_sql(insert_sql, rows)
        return entries

    def _batch_error(self, items: Sequence[PreparedEntry], exc: BaseException) -> AuditWriteError:
        actions = sorted({item.action for item in items})
        shown = "', '".join(actions[:3]) + ("', ..." if len(actions) > 3 else "'")
        return AuditWriteError(
            f"audit log '{self.log_id}' at {safe_url(self.engine.url)} did not record "
            f"{len(items)} entr{'y' if len(items) == 1 else 'ies'} ('{shown}) "
            f"({_db_reason(exc)}); the actions must not proceed unrecorded — check the database "
            "is reachable, writable and migrated, then retry"
        )

    def head(self) -> tuple[int, str]:
        """(last seq, last hash); (0, GENESIS_HASH) for an empty log."""
        with self.engine.connect() as conn:
            return _head(conn, self.log_id)

    def checkpoint(self, path: Path | None = None) -> Checkpoint:
        """A signed checkpoint of this log now (see `export_checkpoint`)."""
        return export_checkpoint(self.engine, self.log_id, self.signer, path)
