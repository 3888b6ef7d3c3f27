"""The gate: authenticate every non-public request before routing, cheaply for
unauthenticated traffic."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import re
from typing import Protocol

import anyio.to_thread
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.auth.cache import KeyCache
from server.api.auth.keys import parse_key
from server.api.auth.roles import PUBLIC_PATHS, UNAUTHORIZED_DETAIL, WWW_AUTHENTICATE
from server.api.auth.store import ApiKeyStore, Unauthenticated
from server.api.limits import LimiterUnavailable, RateLimiter, TokenBucketLimiter

log = logging.getLogger(__name__)


_PRINCIPAL = "principal"


def _json(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


def unauthorized() -> JSONResponse:
    return _json(401, UNAUTHORIZED_DETAIL, {"WWW-Authenticate": WWW_AUTHENTICATE})


class AuthFailureSink(Protocol):
    """Where the gate reports failed and throttled attempts (in memory; it must not block)."""

    def failed(self, client: str, kind: str, key_id: str | None = None) -> None: ...

    def throttled(self, client: str) -> None: ...


NO_CREDENTIALS = "no credentials"
MALFORMED_KEY = "malformed key"


def client_address(scope: Scope) -> str:
    """The caller's address as the limiter and failure records key it.

    IPv4 as is; IPv6 by its /64 (one host usually owns the whole prefix); anything else (a Unix
    socket, a test client) as a short safe name or a digest of it.
    """
    client = scope.get("client")
    host = str(client[0]) if client else ""
    found = _ADDRESSES.get(host)
    if found is None:
        found = _client_address(host)
        if len(_ADDRESSES) >= _ADDRESS_MEMO:
            _ADDRESSES.clear()  # bounded: a flood of addresses only costs re-parsing
        _ADDRESSES[host] = found
    return found


_ADDRESSES: dict[str, str] = {}  # host -> client_address (parsing an address costs ~10 µs)
_ADDRESS_MEMO = 10_000


def _client_address(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if _CLIENT_NAME.fullmatch(host):
            return host
        return "unknown" if not host else "h:" + hashlib.sha256(host.encode()).hexdigest()[:16]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class AuthMiddleware:
    """Pure ASGI: 401 unless the request carries an active key, 429 over the key's rate.

    Runs before routing and before the body is read, so an unauthenticated caller gets the same
    401 for every path, method and body (existing or not).

    Unauthenticated traffic is cheap: before anything else a request takes a token from its
    client address's bucket (`client_limiter`); an empty bucket is a 429 without touching the
    database. A request whose key turns out valid gets its token back, so only failed attempts
    count against an address. Requests without credentials or with a malformed key are refused on
    the event loop (no thread, no query); only well-formed keys are looked up — first in
    `keys` (a `KeyCache`: a recently verified key costs no thread and no query), else in the
    store, in a worker thread. Failures and throttled requests are reported to `failures` (in
    memory, aggregated, audited later). The per-key `limiter` may be in process
    (`TokenBucketLimiter`) or shared by all workers (`RedisTokenBucketLimiter`); if a shared
    limiter cannot be reached the request gets 503, never a free pass.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: ApiKeyStore,
        limiter: RateLimiter,
        client_limiter: TokenBucketLimiter | None = None,
        failures: AuthFailureSink | None = None,
        keys: KeyCache | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.limiter = limiter
        self.client_limiter = client_limiter
        self.failures = failures
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        response = await self._check(scope)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope) -> JSONResponse | None:
        client = client_address(scope)
        if self.client_limiter is not None:
            wait = self.client_limiter.take(client)
            if wait > 0:
                if self.failures is not None:
                    self.failures.throttled(client)
                retry = max(1, math.ceil(wait))
                return _json(
                    429,
                    "too many unauthenticated requests from this address "
                    f"({self.client_limiter.describe()}); retry after {retry} s",
                    {"Retry-After": str(retry)},
                )
        header = _header(scope, b"authorization")
        scheme, token = get_authorization_scheme_param(header)
        if not header or scheme.lower() != "bearer" or not token:
            return self._denied(client, NO_CREDENTIALS)  # never the path or header
        if parse_key(token) is None:
            return self._denied(client, MALFORMED_KEY)
        principal = self.keys.lookup(token) if self.keys is not None else None
        if (
            principal is not None
            and self.keys is not None
            and self.keys.refresh_due(principal.key_id)
        ):
            asyncio.get_running_loop().run_in_executor(None, self.keys.refresh, token)
        if principal is None:
            verify = self.keys.authenticate if self.keys is not None else self.store.authenticate
            try:
                principal = await anyio.to_thread.run_sync(verify, token)
            except Unauthenticated as exc:
                log.debug("401: %s", exc.reason)
                return self._denied(client, exc.kind, exc.key_id)
            except SQLAlchemyError as exc:
                log.error("key store unavailable: %s", type(exc).__name__)
                self._refund(client)  # not the caller's failure
                return _json(503, "the key store (registry database) is unavailable; retry shortly")
        self._refund(client)
        try:
            wait = await self.limiter.acquire(principal.key_id)
        except LimiterUnavailable as exc:
            log.error("rate limiter unavailable: %s", exc)
            return _json(
                503, "the rate limiter is unavailable, so the request was not served; retry shortly"
            )
        if wait > 0:
            retry = max(1, math.ceil(wait))
            return _json(
                429,
                f"rate limit of this API key exceeded ({self.limiter.describe()}); "
                f"retry after {retry} s or spread requests out",
                {"Retry-After": str(retry)},
            )
        scope.setdefault("state", {})[_PRINCIPAL] = principal
        return None

    def _refund(self, client: str) -> None:
        if self.client_limiter is not None:
            self.client_limiter.refund(client)

    def _denied(self, client: str, kind: str, key_id: str | None = None) -> JSONResponse:
        if self.failures is not None:
            self.failures.failed(client, kind, key_id)
        return unauthorized()


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""
