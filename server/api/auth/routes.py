"""Per-route permission checks and the route inventory create_app checks."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security import HTTPBearer

from server.api.auth.gate import _PRINCIPAL
from server.api.auth.roles import (
    FORBIDDEN_DETAIL,
    PUBLIC_PATHS,
    ROLE_PERMISSIONS,
    UNAUTHORIZED_DETAIL,
    WWW_AUTHENTICATE,
    Permission,
    Role,
)
from server.api.auth.store import Principal

log = logging.getLogger(__name__)


bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="atoll_<key id>_<secret>",
    description="An API key from `atoll apikey create`.",
)


async def current_principal(request: Request) -> Principal:
    """The caller AuthMiddleware authenticated; 401 if it did not run (fail closed)."""
    return authenticated(request)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def authenticated(request: Request) -> Principal:
    """The caller AuthMiddleware authenticated for this request; 401 if it did not run (fail
    closed). Plain function: also usable inside a handler, without a dependency of its own."""
    principal = request.scope.get("state", {}).get(_PRINCIPAL)
    if not isinstance(principal, Principal):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=UNAUTHORIZED_DETAIL,
            headers={"WWW-Authenticate": WWW_AUTHENTICATE},
        )
    return principal


def document_bearer_auth(app: FastAPI) -> None:
    """Declare the bearer scheme in the app's OpenAPI spec, on every route that names a
    permission — what a `Security(HTTPBearer)` dependency would declare, without its cost on
    every request (AuthMiddleware has checked the key before routing)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        name = bearer_scheme.scheme_name
        scheme = bearer_scheme.model.model_dump(mode="json", by_alias=True, exclude_none=True)
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[name] = scheme
        guarded = {(r.path, m.lower()) for r in api_routes(app) if r.permissions for m in r.methods}
        for path, item in schema.get("paths", {}).items():
            for method, operation in item.items():
                if (path, method) in guarded:
                    operation["security"] = [{name: []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_PERMISSION_ATTR = "__atoll_permission__"


def require(permission: Permission | str) -> Callable[[Request], Awaitable[Principal]]:
    """Dependency: the caller's role must grant `permission` (403 otherwise).

    Use as `Depends(require("models:read"))`; an unknown permission fails at import time.
    """
    try:
        needed = Permission(permission)
    except ValueError:
        known = ", ".join(p.value for p in Permission)
        raise ValueError(f"unknown permission '{permission}': use one of {known}") from None

    async def check(request: Request) -> Principal:  # async, no sub-dependency: no extra hops
        principal = authenticated(request)
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
