"""The API's own signed audit log ("api"): who read a model, scored, read budgets or the trail.

Entries name the key id and role, the route template, the model and version and how many
records were scored — never a submitted value. A failed write fails the request (503): no call is
served unrecorded. Authentication failures are recorded too (reason only, no secret).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import Engine

from privacy.audit import AuditLog, AuditSigner, AuditWriteError
from server.api.auth import ApiKeyInfo, KeyEventHook, Principal, PrincipalDep

log = logging.getLogger(__name__)
LOG_ID = "api"


def default_key_path(registry_url: str) -> Path:
    """Beside a SQLite registry (`<dir>/audit/api.pem`), else under ~/.atoll."""
    if registry_url.startswith("sqlite:///") and len(registry_url) > len("sqlite:///"):
        return Path(registry_url.removeprefix("sqlite:///")).resolve().parent / "audit" / "api.pem"
    return Path.home() / ".atoll" / "api-audit.pem"


class ApiAudit:
    def __init__(self, engine: Engine, key_path: Path) -> None:
        self.signer = AuditSigner.load_or_create(key_path)
        self.log = AuditLog(engine, LOG_ID, self.signer)

    def record(self, principal: Principal, action: str, subject: str, **details: Any) -> None:
        try:
            self.log.append(
                f"apikey:{principal.key_id}",
                action,
                subject,
                {"role": str(principal.role), **details},
            )
        except AuditWriteError as err:
            log.error("audit write failed: %s", type(err).__name__)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "the audit trail is unavailable, so the request was not served; retry shortly",
            ) from None

    def denied(self, reason: str) -> None:
        """An authentication failure; never blocks the 401 it accompanies."""
        try:
            self.log.append("anonymous", "auth.failed", "api", {"reason": reason[:200]})
        except AuditWriteError as err:
            log.error("audit write for an auth failure failed: %s", type(err).__name__)


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


def audited(action: str) -> Callable[..., None]:
    """Router dependency: record the call (after auth) before the handler runs."""

    def dependency(request: Request, principal: PrincipalDep) -> None:
        route = request.scope.get("route")
        request.app.state.api_audit.record(
            principal,
            action,
            _subject(request),
            method=request.method,
            route=getattr(route, "path", "?"),
        )

    return dependency


def Audited(action: str) -> Any:  # noqa: N802 - reads like Depends
    return Depends(audited(action))


def operator_log(registry_url: str, key_path: Path | None = None) -> AuditLog:
    """The "admin" log in the coordinator database: operators' changes (keys, nodes)."""
    path = key_path or default_key_path(registry_url).with_name("operator.pem")
    return AuditLog(registry_url, "admin", AuditSigner.load_or_create(path))


def key_change_recorder(registry_url: str, key_path: Path | None = None) -> KeyEventHook:
    """An `ApiKeyStore` hook writing each key change to the "admin" log before it happens.

    If the write fails the hook raises and the store refuses the change (nothing unrecorded).
    """
    log = operator_log(registry_url, key_path)

    def record(action: str, info: ApiKeyInfo) -> None:
        log.append(
            "operator",
            f"key.{action}",
            f"key:{info.key_id}",
            {"name": info.name, "role": str(info.role)},
        )

    return record
