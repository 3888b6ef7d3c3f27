"""Input limits that keep one caller from exhausting the service.

- `BodyLimitMiddleware`: request bodies above a byte limit get 413 before they are parsed. It
  counts the bytes as they arrive, so a chunked upload (no Content-Length) is cut off too.
- `TokenBucketLimiter`: requests per API key, and — before authentication — failed attempts per
  client address (both used by `server.api.auth.AuthMiddleware`, which answers 429 with
  Retry-After). The per-client table is bounded (`max_keys`), so a flood from many addresses
  cannot grow memory without limit. In process: the embedded default for one API worker.
- `RedisTokenBucketLimiter`: the same per-key buckets in Redis, shared by every API worker (and
  host), so `atoll serve --workers N` still allows each key its configured rate, not N times it.
  One round trip per request (an atomic script that reads Redis' own clock); if Redis cannot be
  reached the request gets 503 (`LimiterUnavailable`), never a free pass.
The number of records per scoring request is checked by the predict route (`max_records`).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_RATE_PER_SECOND = 20.0
DEFAULT_RATE_BURST = 40
# Before authentication, per client address: failed attempts allowed (a valid key gets its token
# back, so callers with keys are limited only per key).
DEFAULT_CLIENT_RATE_PER_SECOND = 20.0
DEFAULT_CLIENT_RATE_BURST = 40
DEFAULT_CLIENT_TABLE_SIZE = 100_000


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the body passes the limit; FastAPI turns it into a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, detail=_too_large(limit))


def _too_large(limit: int) -> str:
    return f"request body is larger than the limit of {limit} bytes; send fewer records per request"


class BodyLimitMiddleware:
    """Pure ASGI: 413 when Content-Length or the bytes actually received exceed `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await _reply(scope, receive, send, 400, "Content-Length header is not a number")
            return
        if declared is not None and declared > self.max_bytes:
            await _reply(scope, receive, send, 413, _too_large(self.max_bytes))
            return

        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:  # read outside FastAPI's handlers (e.g. by another middleware)
            if started:
                raise
            await _reply(scope, receive, send, 413, _too_large(self.max_bytes))


def _content_length(scope: Scope) -> int | None:
    """The declared body size; None if absent, -1 if not a non-negative integer."""
    for key, value in scope.get("headers", ()):
        if key.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() else -1
    return None


async def _reply(scope: Scope, receive: Receive, send: Send, code: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=code)(scope, receive, send)


class LimiterUnavailable(RuntimeError):
    """A shared rate limiter could not be asked; the request must not go unlimited."""


class RateLimiter(Protocol):
    """What `AuthMiddleware` asks per authenticated request."""

    async def acquire(self, key: str) -> float:
        """Spend one token of `key`: 0.0 if allowed, else seconds until one is available."""
        ...

    def describe(self) -> str: ...


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class TokenBucketLimiter:
    """Token buckets in memory: `rate` requests per second, bursts up to `burst`, per key.

    Per process: behind several API workers each enforces its own bucket. Keyed by authenticated
    key ids the table is bounded by the number of keys; keyed by client addresses it is bounded by
    `max_keys`: past it, buckets that have refilled (forgetting them changes nothing) are dropped,
    then the least recently used.
    """

    def __init__(
        self,
        rate: float = DEFAULT_RATE_PER_SECOND,
        burst: int = DEFAULT_RATE_BURST,
        max_keys: int | None = None,
    ):
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate}, burst={burst}")
        if max_keys is not None and max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """Spend one token: 0.0 if allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._refilled(key, now)
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / self.rate

    async def acquire(self, key: str) -> float:
        """`take` for `RateLimiter` callers (no I/O: it never waits)."""
        return self.take(key)

    def refund(self, key: str, now: float | None = None) -> None:
        """Give back the token `take` spent (the request turned out not to count)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._refilled(key, now)
            bucket.tokens = min(float(self.burst), bucket.tokens + 1)

    def _refilled(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if self.max_keys is not None and len(self._buckets) >= self.max_keys:
                self._evict(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            self._buckets.move_to_end(key)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        return bucket

    def _evict(self, now: float) -> None:
        """Make room in bulk (down to half the table), so eviction costs O(1) per new key."""
        assert self.max_keys is not None
        target = self.max_keys // 2
        full = [
            k
            for k, b in self._buckets.items()
            if b.tokens + (now - b.stamp) * self.rate >= self.burst
        ]
        for k in full[: max(0, len(self._buckets) - target)]:
            del self._buckets[k]
        while len(self._buckets) > target:
            self._buckets.popitem(last=False)  # least recently seen first

    def __len__(self) -> int:
        return len(self._buckets)

    def describe(self) -> str:
        return f"{self.rate:g} requests/s, bursts of {self.burst}"


# KEYS[1] = bucket; ARGV = rate, burst. Refill by Redis' clock (one clock for every worker and
# host), spend one token if there is one, return the wait in seconds as text ("0" if allowed).
_REDIS_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.9f', tokens),
           'stamp', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


class RedisTokenBucketLimiter:
    """Per-key token buckets in Redis (`url`, e.g. redis://127.0.0.1:6379/0), shared by all API
    workers: `rate` requests per second, bursts up to `burst`, per key — the same semantics as
    `TokenBucketLimiter`, enforced across processes and hosts.

    Buckets live under `namespace` (default: derived from the registry URL, so deployments sharing
    a Redis do not share buckets) and expire once they would be full again. Each `acquire` is one
    atomic script (one round trip, Redis' clock). Connections are made per event loop, lazily.
    Errors (Redis down, timeout after `timeout` seconds) raise `LimiterUnavailable`.
    """

    def __init__(
        self,
        url: str,
        rate: float,
        burst: int,
        *,
        namespace: str = "atoll:ratelimit",
        timeout: float = 1.0,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.url = url
        self.rate = rate
        self.burst = burst
        self.namespace = namespace
        self.timeout = timeout
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}

    @staticmethod
    def namespace_for(registry_url: str) -> str:
        """A namespace per deployment (its registry database), without revealing the URL."""
        return "atoll:ratelimit:" + hashlib.sha256(registry_url.encode()).hexdigest()[:16]

    def _script(self) -> Any:
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is None:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                health_check_interval=30,
            )
            found = self._clients[loop] = (client, client.register_script(_REDIS_TAKE))
            for other in [lp for lp in self._clients if lp.is_closed()]:
                self._clients.pop(other, None)  # a finished loop's connections are gone
        return found[1]

    async def acquire(self, key: str) -> float:
        from redis.exceptions import RedisError

        try:
            wait = await self._script()(
                keys=[f"{self.namespace}:{key}"], args=[repr(self.rate), self.burst]
            )
        except (TimeoutError, RedisError, OSError) as exc:
            raise LimiterUnavailable(
                f"Redis at {_redis_safe(self.url)}: {type(exc).__name__}"
            ) from None
        return float(wait)

    async def aclose(self) -> None:
        """Close this event loop's connections (at shutdown)."""
        found = self._clients.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found[0].aclose()

    def describe(self) -> str:
        return f"{self.rate:g} requests/s, bursts of {self.burst}, shared by all API workers"


def _redis_safe(url: str) -> str:
    """A Redis URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
