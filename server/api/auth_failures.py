"""Failed authentication, aggregated: counted in memory per (client address, minute) and written
as one signed `auth.failed` entry per pair once the minute has closed, so a flood of bad requests
costs a bounded number of rows, never one each; and the API's maintenance tick beside it."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from privacy.audit import (
    AuditError,
    Checkpointer,
)

log = logging.getLogger(__name__)


OTHER_CLIENTS = "other"  # where clients past the per-minute limit are counted together


@dataclass
class _Tally:
    failed: int = 0
    throttled: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    key_ids: set[str] = field(default_factory=set)

    def merge(self, other: _Tally, max_key_ids: int) -> None:
        self.failed += other.failed
        self.throttled += other.throttled
        self.reasons.update(other.reasons)
        for key_id in sorted(other.key_ids):
            if len(self.key_ids) >= max_key_ids:
                break
            self.key_ids.add(key_id)


class AuthFailureTally:
    """Failed and throttled attempts counted per (client address, minute), written later as one
    signed `auth.failed` entry each by `write(client, details)`.

    Counting is a dict update under a lock (no I/O on the request path). `flush()` writes the
    minutes that have closed; `flush(everything=True)` all of them (shutdown). Bounded: at most
    `max_clients_per_minute` addresses per minute get their own entry (the rest are counted under
    "other"), at most `max_key_ids` real key ids are named per entry, and if writes keep failing
    only the newest `max_pending_minutes` minutes are kept (older ones are logged and dropped).

    Entry details: {"client", "minute" (UTC, "YYYY-MM-DDTHH:MMZ"), "count" (failed
    authentications), "throttled" (refused by the per-address limiter before authentication),
    "reasons" ({"no credentials" | "malformed key" | "unknown key" | "wrong secret" |
    "revoked key" | "unknown role": n}), "key_ids" (real keys presented with a wrong secret or
    revoked)}.
    """

    def __init__(
        self,
        write: Callable[[str, dict[str, Any]], None],
        *,
        max_clients_per_minute: int = 1000,
        max_key_ids: int = 20,
        max_pending_minutes: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_clients_per_minute < 1 or max_key_ids < 0 or max_pending_minutes < 1:
            raise ValueError("auth failure tally limits must be positive")
        self._write = write
        self.max_clients_per_minute = max_clients_per_minute
        self.max_key_ids = max_key_ids
        self.max_pending_minutes = max_pending_minutes
        self._clock = clock
        self._pending: dict[int, dict[str, _Tally]] = {}
        self._lock = threading.Lock()
        self._flushing = threading.Lock()

    def _tally(self, client: str) -> _Tally:
        minute = int(self._clock() // 60)
        clients = self._pending.get(minute)
        if clients is None:
            clients = self._pending[minute] = {}
            while len(self._pending) > self.max_pending_minutes:
                self._drop(min(self._pending))
        tally = clients.get(client)
        if tally is None:
            if len(clients) >= self.max_clients_per_minute:
                client = OTHER_CLIENTS
                tally = clients.get(client)
            if tally is None:
                tally = clients[client] = _Tally()
        return tally

    def failed(self, client: str, kind: str, key_id: str | None = None) -> None:
        with self._lock:
            tally = self._tally(client)
            tally.failed += 1
            tally.reasons[kind[:40]] += 1
            if key_id is not None and len(tally.key_ids) < self.max_key_ids:
                tally.key_ids.add(key_id)

    def throttled(self, client: str) -> None:
        with self._lock:
            self._tally(client).throttled += 1

    def pending(self) -> int:
        """How many (client, minute) entries are waiting to be written."""
        with self._lock:
            return sum(len(c) for c in self._pending.values())

    def flush(self, *, everything: bool = False) -> int:
        """Write the closed minutes (all minutes if `everything`); returns entries written.

        A failed write keeps that entry and the ones after it for the next flush.
        """
        with self._flushing:
            now_minute = int(self._clock() // 60)
            with self._lock:
                ready = sorted(m for m in self._pending if everything or m < now_minute)
                batch = [(m, self._pending.pop(m)) for m in ready]
            written = 0
            for index, (minute, clients) in enumerate(batch):
                for client in sorted(clients):
                    try:
                        self._write(client, self._details(client, minute, clients[client]))
                    except (AuditError, OSError) as exc:
                        log.error(
                            "could not write auth failure records (%s); keeping them for the "
                            "next flush",
                            type(exc).__name__,
                        )
                        self._restore(minute, {c: t for c, t in clients.items() if c >= client})
                        for later_minute, later in batch[index + 1 :]:
                            self._restore(later_minute, later)
                        return written
                    written += 1
            return written

    def _restore(self, minute: int, clients: dict[str, _Tally]) -> None:
        with self._lock:
            current = self._pending.setdefault(minute, {})
            for client, tally in clients.items():
                current.setdefault(client, _Tally()).merge(tally, self.max_key_ids)
            while len(self._pending) > self.max_pending_minutes:
                self._drop(min(self._pending))

    def _drop(self, minute: int) -> None:
        clients = self._pending.pop(minute)
        log.error(
            "dropping unwritten auth failure records of %s: %d addresses, %d failures",
            _minute_text(minute),
            len(clients),
            sum(t.failed + t.throttled for t in clients.values()),
        )

    def _details(self, client: str, minute: int, tally: _Tally) -> dict[str, Any]:
        return {
            "client": client,
            "minute": _minute_text(minute),
            "count": tally.failed,
            "throttled": tally.throttled,
            "reasons": dict(sorted(tally.reasons.items())),
            "key_ids": sorted(tally.key_ids),
        }


def _minute_text(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%dT%H:%MZ")


class AuditMaintenance:
    """What the API does off the request path: flush failure tallies, write due checkpoints."""

    def __init__(self, tally: AuthFailureTally, checkpointer: Checkpointer | None) -> None:
        self.tally = tally
        self.checkpointer = checkpointer

    def tick(self) -> None:
        self.tally.flush()
        if self.checkpointer is not None:
            self.checkpointer.run_due()

    def shutdown(self) -> None:
        self.tally.flush(everything=True)
        if self.checkpointer is not None:
            self.checkpointer.run_due(force=True)
