"""The API's own signed audit log ("api"): who read a model, scored, read budgets or the trail.

Entries name the key id and role, the route template, the model and version and how many
records were scored — never a submitted value. A failed write fails the request (503): no call is
served unrecorded. Writes are group-committed (`privacy.audit.GroupCommitWriter`): concurrent
requests share a transaction, each waits for its own entry before it is answered.

Failed authentication is recorded too, but aggregated (`server.api.auth_failures`): failures
and requests refused by the per-address limiter are counted in memory per (client address,
minute) and written as one `auth.failed` entry per pair once the minute has closed (and at
shutdown), so a flood of bad requests costs a bounded number of signed rows, never one each.

The signing key is created only for an empty log (first start); a missing key for a log that has
entries is an error, and with pinned public keys the key must be one of them
(`privacy.audit.AuditLog.open`). `AuditMaintenance` writes signed checkpoints of the "api" and
"admin" logs to a configured directory by a `CheckpointPolicy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import Engine

from privacy.audit import (
    AuditEntry,
    AuditError,
    AuditLog,
    AuditWriteError,
    GroupCommitWriter,
    PreparedEntry,
    prepare_entry,
)
from server.api.auth import ApiKeyError, ApiKeyInfo, KeyEventHook, Principal, PrincipalDep

log = logging.getLogger(__name__)
LOG_ID = "api"
ADMIN_LOG_ID = "admin"
AUTH_FAILED = "auth.failed"
CHECKPOINT_EVERY = 100  # commits on the event loop between WAL checkpoints (in a thread)


def default_key_path(registry_url: str) -> Path:
    """Beside a SQLite registry (`<dir>/audit/api.pem`), else under ~/.atoll."""
    if registry_url.startswith("sqlite:///") and len(registry_url) > len("sqlite:///"):
        return Path(registry_url.removeprefix("sqlite:///")).resolve().parent / "audit" / "api.pem"
    return Path.home() / ".atoll" / "api-audit.pem"


class ApiAudit:
    """The writer of the "api" log. `pinned` ({key_id: pem}) are the public keys verifiers are
    configured with: the signing key must be one of them (see `AuditLog.open`).

    Request entries are group-committed: `record_async` (on the event loop) collects the entries
    of all requests that reach it in one turn of the loop and commits them in one transaction —
    right there on SQLite when the database's write lock is free (a short local transaction,
    cheaper than a thread hop), else in the `GroupCommitWriter` thread (PostgreSQL, or another
    worker holding the lock). Each request waits for its own entry to be committed before it is
    answered; a failed transaction fails its requests — and only those — with 503. `record`
    does the same from a worker thread.
    """

    def __init__(
        self, engine: Engine, key_path: Path, *, pinned: Mapping[str, str] | None = None
    ) -> None:
        self.log = AuditLog.open(engine, LOG_ID, key_path, pinned=pinned)
        self.signer = self.log.signer
        self.writer = GroupCommitWriter(self.log)
        self.inline = engine.dialect.name == "sqlite"  # see try_append_prepared
        self._batches: dict[asyncio.AbstractEventLoop, _LoopBatch] = {}
        if self.inline:  # WAL checkpoints run in a worker thread, never inside a loop commit
            self.log.defer_wal_checkpoints()
        self._commits = 0
        self._checkpointing = False

    def committed_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        """After a commit on the loop: every CHECKPOINT_EVERY commits, checkpoint the WAL in a
        thread (one at a time)."""
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY and not self._checkpointing:
            self._commits = 0
            self._checkpointing = True
            loop.run_in_executor(None, self._checkpoint_wal)

    def _checkpoint_wal(self) -> None:
        try:
            self.log.checkpoint_wal()
        except Exception as exc:  # noqa: BLE001 - the next one retries; the data is committed
            log.warning("audit WAL checkpoint failed: %s", type(exc).__name__)
        finally:
            self._checkpointing = False

    @staticmethod
    def _prepare(
        principal: Principal, action: str, subject: str, details: dict[str, Any]
    ) -> PreparedEntry:
        try:
            return prepare_entry(
                f"apikey:{principal.key_id}",
                action,
                subject,
                {"role": str(principal.role), **details},
            )
        except AuditWriteError as err:
            raise _unavailable(err) from None

    def record(self, principal: Principal, action: str, subject: str, **details: Any) -> None:
        """Record one call and wait until it is committed; 503 (HTTPException) if it was not."""
        item = self._prepare(principal, action, subject, details)
        try:
            self.writer.submit_prepared([item])[0].result()
        except AuditWriteError as err:
            raise _unavailable(err) from None

    async def record_async(
        self, principal: Principal, action: str, subject: str, **details: Any
    ) -> None:
        """`record` for the event loop: joins this loop turn's group commit, never blocks."""
        item = self._prepare(principal, action, subject, details)
        loop = asyncio.get_running_loop()
        batch = self._batches.get(loop)
        if batch is None:
            for old in [lp for lp in self._batches if lp.is_closed()]:
                del self._batches[old]
            batch = self._batches[loop] = _LoopBatch(self, loop)
        try:
            await batch.add(item)
        except AuditWriteError as err:
            raise _unavailable(err) from None

    def auth_failures(self, client: str, details: dict[str, Any]) -> None:
        """One aggregated `auth.failed` entry; raises AuditWriteError (the tally keeps it)."""
        self.log.append("anonymous", AUTH_FAILED, f"client:{client}", details)

    def close(self) -> None:
        """Write what is pending, stop the group-commit writer, return its connection."""
        self.writer.close()
        self.log.close()  # the engine is the app's: only the writer's connection is released


class _LoopBatch:
    """The entries submitted on one event loop during one turn of it, committed together."""

    def __init__(self, audit: ApiAudit, loop: asyncio.AbstractEventLoop) -> None:
        self.audit = audit
        self.loop = loop
        self.pending: list[tuple[PreparedEntry, asyncio.Future[AuditEntry]]] = []

    def add(self, item: PreparedEntry) -> asyncio.Future[AuditEntry]:
        waiter: asyncio.Future[AuditEntry] = self.loop.create_future()
        self.pending.append((item, waiter))
        if len(self.pending) == 1:  # the first of this turn: flush after the turn's other work
            self.loop.call_soon(self.flush)
        return waiter

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        items = [item for item, _waiter in batch]
        waiters = [waiter for _item, waiter in batch]
        if self.audit.inline:
            try:
                entries = self.audit.log.try_append_prepared(items)
            except Exception as exc:  # fail closed: exactly this batch's requests
                error = exc if isinstance(exc, AuditWriteError) else _unexpected(exc)
                _settle(waiters, [error] * len(waiters))
                return
            if entries is not None:
                _settle(waiters, entries)
                self.audit.committed_inline(self.loop)
                return
        futures = self.audit.writer.submit_prepared(items)

        def committed(_last: Future[AuditEntry]) -> None:  # in the writer thread
            with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown)
                self.loop.call_soon_threadsafe(_settle_from, waiters, futures)

        futures[-1].add_done_callback(committed)  # FIFO: when the last is done, all are


def _unexpected(exc: BaseException) -> AuditWriteError:
    log.error("audit group commit failed: %s", type(exc).__name__)
    return AuditWriteError(
        f"audit log '{LOG_ID}' did not record the entries ({type(exc).__name__})"
    )


def _settle(
    waiters: list[asyncio.Future[AuditEntry]], outcomes: Sequence[AuditEntry | BaseException]
) -> None:
    for waiter, outcome in zip(waiters, outcomes, strict=True):
        if waiter.done():  # the request was cancelled (client gone): its entry stands anyway
            continue
        if isinstance(outcome, BaseException):
            waiter.set_exception(AuditWriteError(str(outcome)))
        else:
            waiter.set_result(outcome)


def _settle_from(
    waiters: list[asyncio.Future[AuditEntry]], futures: list[Future[AuditEntry]]
) -> None:
    _settle(waiters, [f.exception() or f.result() for f in futures])


def _unavailable(err: AuditWriteError) -> HTTPException:
    log.error("audit write failed: %s", type(err).__name__)
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "the audit trail is unavailable, so the request was not served; retry shortly",
    )


@dataclass(frozen=True)
class AuditTrust:
    """The public keys the API verifies with, pinned per log by its configuration.

    "api" entries verify only with `api`, "admin" entries only with `admin`, every other log
    (coordinator, node:<name>) with `other`. A checkpoint may be signed by any pinned key: it only
    states "log L held N entries ending in H", and the API signs those of "api" and "admin".
    """

    api: Mapping[str, str]
    admin: Mapping[str, str]
    other: Mapping[str, str]

    def keys_for(self, log_id: str) -> dict[str, str]:
        if log_id == LOG_ID:
            return dict(self.api)
        if log_id == ADMIN_LOG_ID:
            return dict(self.admin)
        return dict(self.other)

    @property
    def checkpoint_keys(self) -> dict[str, str]:
        return {**self.other, **self.admin, **self.api}

    @staticmethod
    def option_for(log_id: str) -> str:
        """The `atoll serve` option that pins keys for `log_id`."""
        if log_id == LOG_ID:
            return "--api-audit-public-key"
        if log_id == ADMIN_LOG_ID:
            return "--admin-audit-public-key"
        return "--audit-public-key"


_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def _safe(value: str) -> str:
    """Path parameters are caller-supplied: keep plain names, digest anything else."""
    return (
        value if _SAFE.match(value) else "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]
    )


def _subject(request: Request) -> str:
    params = {k: _safe(str(v)) for k, v in request.path_params.items()}
    if "name" in params:
        return f"model:{params['name']}/v{params.get('version', 'latest')}"
    if "run_id" in params:
        return f"run:{params['run_id']}"
    if "node" in params:
        return f"node:{params['node']}"
    return "api"


def audited(action: str) -> Callable[..., Awaitable[None]]:
    """Router dependency: record the call (after auth) before the handler runs.

    Async: it waits for the group commit on the event loop, not in a worker thread."""

    async def dependency(request: Request, principal: PrincipalDep) -> None:
        route = request.scope.get("route")
        await request.app.state.api_audit.record_async(
            principal,
            action,
            _subject(request),
            method=request.method,
            route=getattr(route, "path", "?"),
        )

    return dependency


def Audited(action: str) -> Any:  # noqa: N802 - reads like Depends
    return Depends(audited(action))


def operator_key_path(registry_url: str) -> Path:
    """The operators' ("admin" log) signing key: `operator.pem` beside the API's key."""
    return default_key_path(registry_url).with_name("operator.pem")


def operator_log(registry_url: str, key_path: Path | None = None) -> AuditLog:
    """The "admin" log in the coordinator database: operators' changes (keys, nodes).

    Its key is created only while the log is empty; a missing key for a log with entries raises
    `AuditKeyError` (restore it; see `AuditLog.open`).
    """
    return AuditLog.open(registry_url, ADMIN_LOG_ID, key_path or operator_key_path(registry_url))


def key_change_recorder(registry_url: str, key_path: Path | None = None) -> KeyEventHook:
    """An `ApiKeyStore` hook writing each key change to the "admin" log before it happens.

    If the write fails the hook raises and the store refuses the change (nothing unrecorded). An
    admin log that cannot be opened (e.g. its key is missing) is an `ApiKeyError`.
    """
    try:
        log = operator_log(registry_url, key_path)
    except AuditError as exc:
        raise ApiKeyError(str(exc)) from None

    def record(action: str, info: ApiKeyInfo) -> None:
        log.append(
            "operator",
            f"key.{action}",
            f"key:{info.key_id}",
            {"name": info.name, "role": str(info.role)},
        )

    return record
