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
memory and audited in aggregate (`server.api.auth_failures.AuthFailureTally`). The per-address
buckets are per process (a guard against floods, not a quota); the per-key rate limit can be
shared by all workers through Redis (`server.api.limits.RedisTokenBucketLimiter`).

The permission checks are async dependencies: authorising a request costs no threadpool hop.
"""

from __future__ import annotations

from server.api.auth.cache import (
    DEFAULT_KEY_CACHE_SECONDS,
    KeyCache,
)
from server.api.auth.gate import (
    MALFORMED_KEY,
    NO_CREDENTIALS,
    AuthFailureSink,
    AuthMiddleware,
    client_address,
    unauthorized,
)
from server.api.auth.keys import (
    KEY_PREFIX,
    format_key,
    parse_key,
)
from server.api.auth.roles import (
    AUTH_RESPONSES,
    FORBIDDEN_DETAIL,
    PUBLIC_PATHS,
    ROLE_PERMISSIONS,
    UNAUTHORIZED_DETAIL,
    WWW_AUTHENTICATE,
    Permission,
    Role,
)
from server.api.auth.routes import (
    PrincipalDep,
    RouteInfo,
    api_routes,
    authenticated,
    bearer_scheme,
    current_principal,
    document_bearer_auth,
    require,
    roles_with,
    unguarded_routes,
)
from server.api.auth.store import (
    ApiKeyError,
    ApiKeyInfo,
    ApiKeyStore,
    KeyEventHook,
    Principal,
    Unauthenticated,
    forget_cached_key,
    register_key_cache,
)

__all__ = [
    "AUTH_RESPONSES",
    "ApiKeyError",
    "ApiKeyInfo",
    "ApiKeyStore",
    "AuthFailureSink",
    "AuthMiddleware",
    "DEFAULT_KEY_CACHE_SECONDS",
    "FORBIDDEN_DETAIL",
    "KEY_PREFIX",
    "KeyCache",
    "KeyEventHook",
    "MALFORMED_KEY",
    "NO_CREDENTIALS",
    "PUBLIC_PATHS",
    "Permission",
    "Principal",
    "PrincipalDep",
    "ROLE_PERMISSIONS",
    "Role",
    "RouteInfo",
    "UNAUTHORIZED_DETAIL",
    "Unauthenticated",
    "WWW_AUTHENTICATE",
    "api_routes",
    "authenticated",
    "bearer_scheme",
    "client_address",
    "current_principal",
    "document_bearer_auth",
    "forget_cached_key",
    "register_key_cache",
    "format_key",
    "parse_key",
    "require",
    "roles_with",
    "unauthorized",
    "unguarded_routes",
]
