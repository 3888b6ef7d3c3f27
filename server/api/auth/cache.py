"""Verified keys, cached briefly: a hit costs no query; revocation applies at once here
and within the TTL in other processes."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from server.api.auth.keys import parse_key
from server.api.auth.store import ApiKeyStore, Principal, Unauthenticated, register_key_cache

log = logging.getLogger(__name__)


DEFAULT_KEY_CACHE_SECONDS = 1.0


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


@dataclass(frozen=True)
class _CachedKey:
    digest: bytes  # sha256 of the whole key string that verified
    principal: Principal
    expires: float  # `ttl` after the query that verified it began
    refresh_at: float  # half-way: the first request after it re-verifies in the background


class KeyCache:
    """Keys that verified against the store, remembered for `ttl` seconds (default 1 s).

    A hit costs one sha256 and a constant-time comparison on the event loop — no thread, no
    query. Only active keys that verified are cached, never failures: a wrong secret, an unknown
    id or a revoked key always goes to the store (and counts against the caller's address).
    Half-way through its TTL an entry is re-verified in the background (`refresh`, one query at a
    time per key) while requests keep using it, so a key in steady use never waits for a query;
    a refresh that finds the key revoked or rotated drops it.

    Revocation and rotation: `ApiKeyStore.rotate`/`revoke` in this process forget the key at once
    (`forget_cached_key`); a change made by another process (the CLI, another API worker) takes
    effect here within `ttl` seconds of its commit, because an entry never outlives `ttl` seconds
    after the query that verified it began. `ttl=0` disables the cache (a query per request).
    """

    def __init__(
        self,
        store: ApiKeyStore,
        ttl: float = DEFAULT_KEY_CACHE_SECONDS,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0 or max_keys < 1:
            raise ValueError(f"ttl must be >= 0 and max_keys >= 1, got {ttl} and {max_keys}")
        self.store = store
        self.ttl = ttl
        self.max_keys = max_keys
        self._clock = clock
        self._items: OrderedDict[str, _CachedKey] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0  # bumped by forget(): a lookup that raced it is not cached
        self._refreshing: set[str] = set()
        register_key_cache(self)

    def lookup(self, token: str) -> Principal | None:
        """The principal of a well-formed key verified less than `ttl` seconds ago, else None."""
        parsed = parse_key(token)
        if parsed is None:
            return None
        hit = self._items.get(parsed[0])
        if hit is None or self._clock() >= hit.expires:
            return None
        if not hmac.compare_digest(hit.digest, _token_digest(token)):
            return None  # another secret for this id (e.g. just rotated elsewhere): ask the store
        return hit.principal

    def refresh_due(self, key_id: str) -> bool:
        """Whether a request that just hit `key_id` should start its background refresh (then
        it is marked in flight: call `refresh` exactly once)."""
        hit = self._items.get(key_id)
        if hit is None or self._clock() < hit.refresh_at:
            return False
        with self._lock:
            if key_id in self._refreshing:
                return False
            self._refreshing.add(key_id)
        return True

    def refresh(self, token: str) -> None:
        """Re-verify a cached key (in a thread); drops it if it is no longer valid."""
        parsed = parse_key(token)
        key_id = parsed[0] if parsed else ""
        try:
            self.authenticate(token)
        except Unauthenticated:
            self.forget(key_id)
        except Exception as exc:  # noqa: BLE001 - store down: the entry expires on its own
            log.warning("key refresh failed: %s", type(exc).__name__)
        finally:
            with self._lock:
                self._refreshing.discard(key_id)

    def authenticate(self, token: str) -> Principal:
        """`ApiKeyStore.authenticate` (a query; run it in a thread), caching a success."""
        with self._lock:
            generation = self._generation
        started = self._clock()
        principal = self.store.authenticate(token)
        if self.ttl > 0:
            entry = _CachedKey(
                _token_digest(token), principal, started + self.ttl, started + self.ttl / 2
            )
            with self._lock:
                if self._generation == generation:
                    self._items[principal.key_id] = entry
                    self._items.move_to_end(principal.key_id)
                    while len(self._items) > self.max_keys:
                        self._items.popitem(last=False)
        return principal

    def forget(self, key_id: str) -> None:
        with self._lock:
            self._generation += 1
            self._items.pop(key_id, None)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
