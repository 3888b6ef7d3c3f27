"""Who may call the scoring API, and what each caller may do.

Callers send `Authorization: Bearer atoll_<key id>_<secret>`. Keys are made by `atoll apikey
create` (secret shown once) and stored only as HMAC-SHA256(per-key salt, secret): the secret is
256 random bits, so a fast keyed hash is as strong as a slow password KDF here and keeps the
cost of a check to one indexed lookup and one constant-time comparison. A key that verified is
then trusted for `KeyCache.ttl` (1 s) without a query — revoking or rotating it stops it at once
in the process that does it, and within that second everywhere else (`KeyCache`).

Every path but `/health` needs a valid key (`AuthMiddleware`, before routing, so nothing about
routes, models or keys is revealed to a caller without one); each route then names the one
permission it needs with `require(...)`; roles map to permissions in `ROLE_PERMISSIONS` and
nowhere else. A new router is guarded with one line:

    router = APIRouter(dependencies=[Depends(require("budgets:read"))], responses=AUTH_RESPONSES)

`create_app` refuses to build an app with a route that names no permission.

Unauthenticated traffic is cheap: `AuthMiddleware` first takes a token from the caller's
address's bucket (20/s, bursts of 40 by default) and answers 429 when it is empty, without a
query; a valid key gets its token back, so only failed attempts count. Requests without
credentials or with a malformed key are refused on the event loop; failures are counted in
memory and audited in aggregate (`server.api.audit_trail.AuthFailureTally`). The per-address
buckets are per process (a guard against floods, not a quota); the per-key rate limit can be
shared by all workers through Redis (`server.api.limits.RedisTokenBucketLimiter`).

The permission checks are async dependencies: authorising a request costs no threadpool hop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import math
import re
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Protocol

import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Request, Security, status
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from common.db import (
    SQLITE_BEGIN_OPTION,
    make_engine,
    make_session_factory,
    migrate,
    safe_url,
    utcnow,
)
from server.api.limits import LimiterUnavailable, RateLimiter, TokenBucketLimiter
from server.auth_models import ApiKey

log = logging.getLogger(__name__)


# ---- roles and permissions ---------------------------------------------------------------------


class Role(StrEnum):
    APP = "app"  # marketing/CRM apps: score records, nothing else
    ANALYST = "analyst"  # read model cards and metrics
    GOVERNANCE = "governance"  # budgets, audit trail, verification (and the cards they verify)
    ADMIN = "admin"  # issue/revoke keys, set federation policy


class Permission(StrEnum):
    MODELS_SCORE = "models:score"
    MODELS_READ = "models:read"
    BUDGETS_READ = "budgets:read"
    AUDIT_READ = "audit:read"
    KEYS_MANAGE = "keys:manage"
    POLICY_WRITE = "policy:write"


# The whole access policy. Roles are not hierarchical: admin manages keys and policy but does not
# read budgets or score, so a leaked admin key exposes no data.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.APP: frozenset({Permission.MODELS_SCORE}),
    Role.ANALYST: frozenset({Permission.MODELS_READ}),
    Role.GOVERNANCE: frozenset(
        {Permission.MODELS_READ, Permission.BUDGETS_READ, Permission.AUDIT_READ}
    ),
    Role.ADMIN: frozenset({Permission.KEYS_MANAGE, Permission.POLICY_WRITE}),
}

PUBLIC_PATHS = frozenset({"/health"})

# Identical for every failure of its kind, so a response reveals nothing about what exists.
UNAUTHORIZED_DETAIL = (
    "missing or invalid API key: send 'Authorization: Bearer <key>' with an active key "
    "from `atoll apikey create`"
)
FORBIDDEN_DETAIL = (
    "this API key's role does not allow this request; ask an admin for a key with the right role"
)
WWW_AUTHENTICATE = 'Bearer realm="atoll"'

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, malformed, unknown, rotated-out or revoked API key."},
    403: {"description": "The key's role does not have the permission this route needs."},
    429: {
        "description": "Rate limit of this API key, or of failed attempts from this address, "
        "exceeded; see the Retry-After header."
    },
}


# ---- key material ------------------------------------------------------------------------------

KEY_PREFIX = "atoll"
_KEY_ID_HEX = 12  # 48 bits: unique id, public
_SECRET_BYTES = 32  # 256 bits: the secret
_KEY_PATTERN = re.compile(r"atoll_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}")
_DUMMY_SALT = secrets.token_bytes(16)


def _digest(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode("ascii"), hashlib.sha256).hexdigest()


def format_key(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}_{key_id}_{secret}"


def parse_key(presented: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key string; None otherwise."""
    m = _KEY_PATTERN.fullmatch(presented)
    return (m[1], m[2]) if m else None


# ---- the key store -----------------------------------------------------------------------------


class ApiKeyError(ValueError):
    """A key operation cannot be done; the message says why and what to do."""


class Unauthenticated(Exception):
    """Presented credentials are not an active key; `reason` is for logs, never for callers.

    `kind` is the reason without identifiers (what failure audit records count); `key_id` is set
    when the presented id belongs to a real key (a wrong secret or a revoked key).
    """

    def __init__(self, reason: str, kind: str | None = None, key_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind or reason
        self.key_id = key_id


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    key_id: str
    name: str
    role: Role

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]


@dataclass(frozen=True)
class ApiKeyInfo:
    """Everything about a key except its secret, salt and hash."""

    key_id: str
    name: str
    role: str
    created_at: datetime
    rotated_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _info(row: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        row.key_id, row.name, row.role, row.created_at, row.rotated_at, row.revoked_at
    )


KeyEventHook = Callable[[str, ApiKeyInfo], None]


class ApiKeyStore:
    """API keys in the coordinator database (table `api_keys`, registry migration 0002).

    `on_event(action, info)` ("created", "rotated", "revoked") runs before each change is
    written, so an audit trail can record it; if the hook raises, nothing changes (an action
    that cannot be recorded is refused). Every change is also logged (never the secret).
    """

    def __init__(self, engine: Engine, on_event: KeyEventHook | None = None) -> None:
        self.engine = engine
        self._sessions = make_session_factory(engine)
        self._on_event = on_event
        self._owns_engine = False

    @classmethod
    def open(cls, url: str, on_event: KeyEventHook | None = None) -> ApiKeyStore:
        """A store on its own engine; migrates the database (same migrations as the registry)."""
        from server.registry import MIGRATIONS_DIR

        engine = make_engine(url)
        try:
            migrate(engine, MIGRATIONS_DIR)
        except OperationalError as exc:
            engine.dispose()
            raise ApiKeyError(
                f"cannot open the key store at {safe_url(url)}: "
                f"{str(exc.orig).strip().splitlines()[0]}; check the database is reachable and "
                "the --registry URL is the coordinator's registry"
            ) from None
        store = cls(engine, on_event)
        store._owns_engine = True
        return store

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> ApiKeyStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
        with self._sessions() as session, session.begin():
            session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            yield session

    def _record(self, action: str, info: ApiKeyInfo) -> None:
        """Before a change is written: log it and let the audit hook refuse it by raising."""
        log.info("api key %s: id=%s name=%s role=%s", action, info.key_id, info.name, info.role)
        if self._on_event is not None:
            self._on_event(action, info)

    # -- lifecycle --

    def create(self, name: str, role: Role | str) -> tuple[ApiKeyInfo, str]:
        """A new key; returns its info and the full key string, which is never stored."""
        if not _NAME_PATTERN.fullmatch(name):
            raise ApiKeyError(
                "key name must be 1-100 characters of letters, digits, space, '.', '_', '@' or "
                "'-', starting with a letter or digit (e.g. crm-scoring)"
            )
        checked = _role(role)
        key_id, secret, salt = secrets.token_hex(_KEY_ID_HEX // 2), _new_secret(), _salt()
        row = ApiKey(
            key_id=key_id,
            name=name,
            role=checked.value,
            salt=salt,
            secret_hash=_digest(salt, secret),
            created_at=utcnow(),
        )
        info = _info(row)
        self._record("created", info)
        try:
            with self._write() as session:
                session.add(row)
        except IntegrityError:  # a 48-bit id collision: astronomically unlikely
            raise ApiKeyError("the new key id is already taken; run the command again") from None
        return info, format_key(key_id, secret)

    def rotate(self, key_id: str) -> tuple[ApiKeyInfo, str]:
        """A new secret for an active key (same id, name and role); the old secret stops working."""
        secret, salt, now = _new_secret(), _salt(), utcnow()
        with self._sessions() as session:
            current = _info(self._active_row(session, key_id, "rotate"))
        info = replace(current, rotated_at=now)
        self._record("rotated", info)
        with self._write() as session:
            row = self._active_row(session, key_id, "rotate")
            row.salt, row.secret_hash, row.rotated_at = salt, _digest(salt, secret), now
        forget_cached_key(key_id)  # the old secret stops at once in this process
        return info, format_key(key_id, secret)

    def revoke(self, key_id: str) -> ApiKeyInfo:
        """Disable a key for good (the row stays, for the record)."""
        now = utcnow()
        with self._sessions() as session:
            current = _info(self._active_row(session, key_id, "be revoked"))
        info = replace(current, revoked_at=now)
        self._record("revoked", info)
        with self._write() as session:
            self._active_row(session, key_id, "be revoked").revoked_at = now
        forget_cached_key(key_id)  # 401 at once in this process
        return info

    def _active_row(self, session: Session, key_id: str, action: str) -> ApiKey:
        row = session.get(ApiKey, key_id)
        if row is None:
            raise ApiKeyError(f"no API key with id '{key_id}'; `atoll apikey list` shows the ids")
        if row.revoked_at is not None:
            raise ApiKeyError(
                f"API key '{key_id}' was revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC and "
                f"cannot {action}; create a new key instead"
            )
        return row

    def list_keys(self) -> list[ApiKeyInfo]:
        """Every key, oldest first, active or not."""
        with self._sessions() as session:
            rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
        return [_info(r) for r in rows]

    # -- checking --

    def authenticate(self, presented: str) -> Principal:
        """The principal of an active key; raises Unauthenticated (reason for logs only)."""
        parsed = parse_key(presented)
        if parsed is None:
            raise Unauthenticated("malformed key")
        key_id, secret = parsed
        with self._sessions() as session:
            row = session.get(ApiKey, key_id)
        if row is None:
            _digest(_DUMMY_SALT, secret)  # same work as a real check
            raise Unauthenticated(f"unknown key id {key_id}", "unknown key")
        if not hmac.compare_digest(_digest(row.salt, secret), row.secret_hash):
            raise Unauthenticated(f"wrong secret for key id {key_id}", "wrong secret", key_id)
        if row.revoked_at is not None:
            raise Unauthenticated(f"revoked key id {key_id}", "revoked key", key_id)
        try:
            role = Role(row.role)
        except ValueError:
            raise Unauthenticated(
                f"key id {key_id} has an unknown role", "unknown role", key_id
            ) from None
        return Principal(key_id=row.key_id, name=row.name, role=role)


def _new_secret() -> str:
    return secrets.token_urlsafe(_SECRET_BYTES)


def _salt() -> bytes:
    return secrets.token_bytes(16)


def _role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise ApiKeyError(
            f"unknown role '{role}': use one of {', '.join(r.value for r in Role)}"
        ) from None


# ---- verified keys, cached briefly -------------------------------------------------------------

DEFAULT_KEY_CACHE_SECONDS = 1.0
_KEY_CACHES: weakref.WeakSet[KeyCache] = weakref.WeakSet()
_KEY_CACHES_LOCK = threading.Lock()


def forget_cached_key(key_id: str) -> None:
    """Drop `key_id` from every key cache in this process (`ApiKeyStore.rotate`/`revoke` call
    it after their change is committed): the old secret gets 401 on the very next request."""
    with _KEY_CACHES_LOCK:
        caches = list(_KEY_CACHES)
    for cache in caches:
        cache.forget(key_id)


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
        with _KEY_CACHES_LOCK:
            _KEY_CACHES.add(self)

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


# ---- the gate: authenticate every non-public request before routing --------------------------

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


# ---- per-route permission checks ---------------------------------------------------------------

bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="atoll_<key id>_<secret>",
    description="An API key from `atoll apikey create`.",
)


async def current_principal(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> Principal:
    """The caller AuthMiddleware authenticated; 401 if it did not run (fail closed)."""
    principal = getattr(request.state, _PRINCIPAL, None)
    if not isinstance(principal, Principal):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=UNAUTHORIZED_DETAIL,
            headers={"WWW-Authenticate": WWW_AUTHENTICATE},
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def authenticated(request: Request) -> Principal:
    """The caller of a request whose route `require`s a permission (which already checked it):
    `current_principal` without a dependency of its own, for hot paths. Fails closed (401)."""
    principal = request.scope.get("state", {}).get(_PRINCIPAL)
    if not isinstance(principal, Principal):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=UNAUTHORIZED_DETAIL,
            headers={"WWW-Authenticate": WWW_AUTHENTICATE},
        )
    return principal


_PERMISSION_ATTR = "__atoll_permission__"


def require(permission: Permission | str) -> Callable[[Principal], Awaitable[Principal]]:
    """Dependency: the caller's role must grant `permission` (403 otherwise).

    Use as `Depends(require("models:read"))`; an unknown permission fails at import time.
    """
    try:
        needed = Permission(permission)
    except ValueError:
        known = ", ".join(p.value for p in Permission)
        raise ValueError(f"unknown permission '{permission}': use one of {known}") from None

    async def check(principal: PrincipalDep) -> Principal:  # async: no threadpool hop
        if not principal.can(needed):
            log.info("403: key %s (%s) lacks %s", principal.key_id, principal.role, needed)
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=FORBIDDEN_DETAIL)
        return principal

    setattr(check, _PERMISSION_ATTR, needed)
    check.__name__ = f"require_{needed.value.replace(':', '_')}"
    return check


def _permissions(dependant: Dependant) -> set[Permission]:
    found: set[Permission] = set()
    for dep in dependant.dependencies:
        perm = getattr(dep.call, _PERMISSION_ATTR, None)
        if perm is not None:
            found.add(perm)
        found |= _permissions(dep)
    return found


@dataclass(frozen=True)
class RouteInfo:
    """One API route as served (prefixes and include-time dependencies applied)."""

    path: str
    methods: frozenset[str]
    permissions: frozenset[Permission]


def api_routes(app: FastAPI) -> list[RouteInfo]:
    """Every APIRoute of the app with the permissions its `require(...)` dependencies ask for."""
    found = []
    for ctx in iter_route_contexts(app.routes):
        if isinstance(ctx.original_route, APIRoute):
            found.append(
                RouteInfo(
                    path=str(ctx.path),
                    methods=frozenset(ctx.methods or ()),
                    permissions=frozenset(_permissions(ctx.dependant)),
                )
            )
    return found


def unguarded_routes(app: FastAPI) -> list[str]:
    """Non-public routes that name no permission (any key of any role could call them)."""
    return [
        f"{','.join(sorted(r.methods))} {r.path}"
        for r in api_routes(app)
        if r.path not in PUBLIC_PATHS and not r.permissions
    ]


def roles_with(permission: Permission) -> list[Role]:
    return [role for role, perms in ROLE_PERMISSIONS.items() if permission in perms]
