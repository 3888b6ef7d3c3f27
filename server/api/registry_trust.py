"""What the API answers when a registry row fails its publisher signature.

`Registry` (opened with the pinned `RowVerifier`) raises `RowRefused` for that row only; the
request gets 409 with a message naming the model and version, and the refusal is recorded in the
api log (`registry.row-refused`). Other models — and other versions — are served as before.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException, Request, status
from fastapi.responses import JSONResponse

from server.api.auth import authenticated
from server.registry import RowRefused

ROW_REFUSED = "registry.row-refused"
log = logging.getLogger(__name__)


async def row_refused(request: Request, exc: Exception) -> JSONResponse:
    """409 naming the model and version; one audit entry per refused request."""
    assert isinstance(exc, RowRefused)
    try:
        await request.app.state.api_audit.record_async(
            authenticated(request),
            ROW_REFUSED,
            f"model:{exc.name}/v{exc.version}",
            model=exc.name,
            version=exc.version,
            reason=exc.why,
            route=getattr(request.scope.get("route"), "path", "?"),
        )
    except HTTPException as err:  # the audit store is down: still refuse, and say so in the log
        log.error("could not audit a refused registry row (%s)", err.status_code)
    return JSONResponse(status_code=status.HTTP_409_CONFLICT, content={"detail": str(exc)})
