"""The coordinator's audit trail over HTTP: query, export as JSON Lines, verify. Governance only."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import Engine

from privacy.audit import VerifyReport, query, verify
from server.api.audit_trail import Audited
from server.api.auth import AUTH_RESPONSES, Permission, require

router = APIRouter(
    prefix="/audit",
    tags=["audit"],
    dependencies=[Depends(require(Permission.AUDIT_READ)), Audited("api.audit_read")],
    responses=AUTH_RESPONSES,
)
LOG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,99}$"


def _engine(request: Request) -> Engine:
    return request.app.state.privacy_engine


def _keys(request: Request) -> dict[str, str]:
    return request.app.state.audit_keys


Log = Annotated[str, Query(pattern=LOG_PATTERN, description="coordinator, api or node:<name>")]
Name = Annotated[str | None, Query(max_length=200, description="exact, or a prefix ending in *")]


def entries(
    request: Request,
    log: Log = "coordinator",
    since: datetime | None = None,
    until: datetime | None = None,
    actor: Name = None,
    action: Name = None,
    subject: Name = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[dict[str, Any]]:
    """Entries of one log filtered by time range, actor, action and subject (`run:<id>`,
    `model:<name>/v<n>`)."""
    rows = query(
        _engine(request),
        log,
        since=since,
        until=until,
        actor=actor,
        action=action,
        subject=subject,
        limit=limit,
    )
    return [e.to_json_dict() for e in rows]


Entries = Annotated[list[dict[str, Any]], Depends(entries)]


@router.get("")
def audit_entries(rows: Entries) -> list[dict[str, Any]]:
    """Entries filtered by time range, actor, action and subject; a trailing `*` is a prefix."""
    return rows


@router.get("/export", response_class=PlainTextResponse)
def audit_export(rows: Entries) -> PlainTextResponse:
    """The same entries as JSON Lines (verifiable offline with `atoll audit verify --jsonl`)."""
    body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    return PlainTextResponse(body, media_type="application/x-ndjson")


@router.get("/verify", response_model=VerifyReport)
def audit_verify(request: Request, log: Log = "coordinator") -> VerifyReport:
    """Check the chain, signatures and sequence; report the first bad entry if any."""
    return verify(_engine(request), log, _keys(request))
