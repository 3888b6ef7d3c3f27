"""Roles, permissions and the fixed answers every refusal gets."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Role(StrEnum):
    APP = "app"  # marketing/CRM apps: score records, nothing else
    ANALYST = "analyst"  # read model cards and metrics; run federated analytics queries
    GOVERNANCE = "governance"  # budgets, audit trail, verification (and the cards they verify)
    ADMIN = "admin"  # issue/revoke keys, set federation policy


class Permission(StrEnum):
    MODELS_SCORE = "models:score"
    MODELS_READ = "models:read"
    QUERIES_RUN = "queries:run"  # preview, submit, read and export federated analytics queries
    BUDGETS_READ = "budgets:read"
    AUDIT_READ = "audit:read"
    KEYS_MANAGE = "keys:manage"
    POLICY_WRITE = "policy:write"


# The whole access policy. Roles are not hierarchical: admin manages keys and policy but does not
# read budgets or score, so a leaked admin key exposes no data.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.APP: frozenset({Permission.MODELS_SCORE}),
    Role.ANALYST: frozenset({Permission.MODELS_READ, Permission.QUERIES_RUN}),
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
