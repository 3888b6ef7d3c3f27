"""Group commit: many concurrent callers, one transaction per batch, one chain."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from privacy.audit.canonical import AuditWriteError
from privacy.audit.entries import AuditEntry, PreparedEntry, prepare_entry

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from privacy.audit.chain import AuditLog


class GroupCommitWriter:
    """Group commit for one `AuditLog`: entries submitted from any thread (or event loop) while a
    commit is in flight are written together in the next transaction (`append_prepared`).

    `submit(...)` checks the entry at once (AuditWriteError if invalid) and returns a future that
    resolves to the committed, signed `AuditEntry` — or raises AuditWriteError if the transaction
    holding it failed; a failure fails exactly the entries of that transaction. `append(...)`
    waits for it. One writer thread, started on first use; `close()` writes what is pending and
    stops it. At most `max_batch` entries per transaction. `batches` counts transactions
    committed (tests and benchmarks read it).
    """

    def __init__(self, log: AuditLog, *, max_batch: int = 256) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.log = log
        self.max_batch = max_batch
        self._queue: deque[tuple[PreparedEntry, Future[AuditEntry]]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.batches = 0

    def submit(
        self,
        actor: str,
        action: str,
        subject: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> Future[AuditEntry]:
        """Queue one entry; the future resolves once it is committed (see the class)."""
        return self.submit_prepared([prepare_entry(actor, action, subject, details)])[0]

    def submit_prepared(self, items: Sequence[PreparedEntry]) -> list[Future[AuditEntry]]:
        """Queue checked entries (`prepare_entry`) in order, with one wake-up of the writer.

        Entries are committed in queue order, so when the last future is done all are."""
        futures: list[Future[AuditEntry]] = [Future() for _ in items]
        with self._cond:
            self._queue.extend(zip(items, futures, strict=True))
            if self._thread is None:
                self._start()
            self._cond.notify()
        return futures

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"audit-writer:{self.log.log_id}", daemon=True
        )
        self._thread.start()

    def append(
        self,
        actor: str,
        action: str,
        subject: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Record one entry and wait until it is committed; AuditWriteError if it was not."""
        return self.submit(actor, action, subject, details).result()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write everything submitted so far, then stop the writer thread (a later `submit`
        starts a new one: an app whose lifespan ends and starts again keeps working)."""
        with self._cond:
            thread = self._thread
            if thread is None:
                return
            self._stopping = True
            self._cond.notify_all()
        thread.join(timeout)
        with self._cond:
            if self._thread is thread and not thread.is_alive():
                self._thread = None
                self._stopping = False
                if self._queue:  # submitted while the old thread was leaving
                    self._start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return  # asked to stop, and drained
                batch = [
                    self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))
                ]
            self._commit(batch)

    def _commit(self, batch: list[tuple[PreparedEntry, Future[AuditEntry]]]) -> None:
        # A caller that gave up (cancelled) still gets its entry written: the action happened.
        waiting = [future.set_running_or_notify_cancel() for _item, future in batch]
        try:
            entries = self.log.append_prepared([item for item, _future in batch])
        except BaseException as exc:  # fail closed: every caller of this transaction, no other
            if isinstance(exc, AuditWriteError):
                message = str(exc)
            else:
                log.exception("audit log %s: group commit failed", self.log.log_id)
                message = (
                    f"audit log '{self.log.log_id}' did not record {len(batch)} entries "
                    f"({type(exc).__name__}); the actions must not proceed unrecorded"
                )
            for (_item, future), alive in zip(batch, waiting, strict=True):
                if alive:
                    future.set_exception(AuditWriteError(message))
            if not isinstance(exc, Exception):
                raise
            return
        self.batches += 1
        for (_item, future), entry, alive in zip(batch, entries, waiting, strict=True):
            if alive:
                future.set_result(entry)
