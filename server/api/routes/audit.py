"""The audit trails over HTTP: query, export as JSON Lines, verify. Governance only.

Verification uses only the public keys pinned in the API's configuration for that log (never a
key found beside the signing key or in the database), and a signed checkpoint from the API's
checkpoint directory (the newest by default), so a deleted tail is reported too.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import PlainTextResponse
from sqlalchemy import Engine

from privacy.audit import (
    AuditReadError,
    Checkpoint,
    Problem,
    VerifyReport,
    latest_checkpoint,
    query,
    verify,
)
from server.api.audit_trail import Audited, AuditTrust
from server.api.auth import AUTH_RESPONSES, Permission, require

router = APIRouter(
    prefix="/audit",
    tags=["audit"],
    dependencies=[Depends(require(Permission.AUDIT_READ)), Audited("api.audit_read")],
    responses=AUTH_RESPONSES,
)
LOG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,99}$"
CHECKPOINT_PATTERN = r"^(latest|none|[A-Za-z0-9][A-Za-z0-9._@-]{0,200}\.json)$"


def _engine(request: Request) -> Engine:
    return request.app.state.privacy_engine


def _trust(request: Request) -> AuditTrust:
    return request.app.state.audit_trust


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


CheckpointName = Annotated[
    str | None,
    Query(
        pattern=CHECKPOINT_PATTERN,
        description="`latest` (the default when the API has a checkpoint directory): the "
        "log's checkpoint with the highest seq there; a file name in that directory; or `none`",
    ),
]


def _checkpoint(request: Request, log: str, name: str | None) -> tuple[str, Checkpoint] | None:
    directory: Path | None = request.app.state.checkpoint_dir
    if name == "none" or (name is None and directory is None):
        return None
    if directory is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            "the API has no checkpoint directory (serve with --checkpoint-dir); pass "
            "checkpoint=none or verify offline with `atoll audit verify --checkpoint FILE`",
        )
    if name is None or name == "latest":
        found = latest_checkpoint(directory, log)
        return (found[0].name, found[1]) if found is not None else None
    path = directory / name
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no checkpoint of that name")
    try:
        return name, Checkpoint.load(path)
    except AuditReadError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


@router.get("/verify", response_model=VerifyReport)
def audit_verify(
    request: Request, log: Log = "coordinator", checkpoint: CheckpointName = None
) -> VerifyReport:
    """Check the chain, signatures and sequence against the public keys pinned for the log,
    and the tail against a signed checkpoint; report the first bad entry if any.

    A log that ends below the checkpoint (entries deleted, or emptied altogether) fails as
    `truncated`; a log signed by a key that is not pinned fails as `unknown_key`.
    """
    trust = _trust(request)
    keys = trust.keys_for(log)
    mark = _checkpoint(request, log, checkpoint)
    report = verify(
        _engine(request),
        log,
        keys,
        mark[1] if mark else None,
        checkpoint_keys=trust.checkpoint_keys,
    )
    update: dict[str, object] = {"checkpoint_file": mark[0] if mark else None}
    if not keys and report.problem == Problem.UNKNOWN_KEY:
        update["message"] = (
            f"{report.message} — no public key is pinned for log '{log}': start the API with "
            f"{trust.option_for(log)} FILE.pub"
        )
    return report.model_copy(update=update)
