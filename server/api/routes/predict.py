"""Score records with a published model: probability, reason codes and warnings per record.

Async from end to end: the key check, model lookup and audit wait happen on the event loop
(no threadpool hops); a small batch of a linear model is scored inline (a few hundred µs), larger
batches and MLPs in a worker thread. Each request's audit entry is committed (group commit)
before its answer is sent.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse

from server.api.auth import AUTH_RESPONSES, Permission, Principal, authenticated, require
from server.api.deps import LoadedModel, model_for, parse_version
from server.api.records import RecordsInvalid
from server.api.schemas import ErrorOut, PredictRequest, PredictResponse, RecordsInvalidOut

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/models",
    tags=["predict"],
    dependencies=[Depends(require(Permission.MODELS_SCORE))],
    responses=AUTH_RESPONSES,
)

MAX_PROBLEMS_SHOWN = 100
_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such model or version."},
    413: {"model": ErrorOut, "description": "More records or body bytes than the limits."},
    422: {
        "model": RecordsInvalidOut,
        "description": "Records break the data contract (or the body is malformed: then "
        "`detail` lists `loc`/`msg`/`type`). Submitted values are never echoed.",
    },
}


async def _audit(
    request: Request, principal: Principal, loaded: LoadedModel, n: int, outcome: str
) -> None:
    """Who scored how many records with which model version (never a value); fails closed."""
    await request.app.state.api_audit.record_async(
        principal,
        "api.predict",
        f"model:{loaded.card.name}/v{loaded.card.version}",
        route=getattr(request.scope.get("route"), "path", "?"),
        records=n,
        outcome=outcome,
        model=loaded.card.name,
        version=loaded.card.version,
    )


async def _score(
    loaded: LoadedModel, body: PredictRequest, request: Request, principal: Principal
) -> JSONResponse:
    limit: int = request.app.state.max_records
    n = len(body.records)
    if n > limit:
        raise HTTPException(
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"{n} records in one request but the limit is {limit}; "
            "split the batch into smaller requests",
        )
    scorer = loaded.scorer
    try:
        if scorer.inline(n):  # a few records of a linear model: cheaper than a thread hop
            predictions = scorer.predictions(body.records, top_k=body.top_k)
        else:
            predictions = await anyio.to_thread.run_sync(
                partial(scorer.predictions, body.records, top_k=body.top_k)
            )
    except RecordsInvalid as exc:
        shown = [
            {"record": p.record, "field": p.field, "problem": p.problem}
            for p in exc.problems[:MAX_PROBLEMS_SHOWN]
        ]
        hidden = len(exc.problems) - len(shown)
        if hidden > 0:
            shown.append({"record": None, "field": None, "problem": f"{hidden} more not shown"})
        log.info(
            "rejected %d records for %s v%d: %d problems",
            n,
            loaded.card.name,
            loaded.card.version,
            len(exc.problems),
        )
        await _audit(request, principal, loaded, n, "rejected")
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=shown) from None
    if log.isEnabledFor(logging.INFO):
        log.info("scored %d records with %s v%d", n, loaded.card.name, loaded.card.version)
    await _audit(request, principal, loaded, n, "scored")  # committed before the answer leaves
    # The body `PredictResponse` describes, built directly (no per-record models to validate).
    return JSONResponse(
        {
            "model": loaded.card.name,
            "version": loaded.card.version,
            "contract_hash": loaded.card.contract_hash,
            "predictions": predictions,
        }
    )


# The model and the caller are looked up in the handlers, not as dependencies: every dependency
# costs FastAPI a resolution pass per request. The router's `require(...)` has authorised the
# caller before a handler runs; `authenticated` reads who it was.


@router.post("/{name}/predict", response_model=PredictResponse, responses=_RESPONSES)
async def predict_latest(name: str, body: PredictRequest, request: Request) -> JSONResponse:
    """Score records with the latest version of a model."""
    loaded = await model_for(request, name, None)
    return await _score(loaded, body, request, authenticated(request))


@router.post(
    "/{name}/versions/{version}/predict", response_model=PredictResponse, responses=_RESPONSES
)
async def predict_version(
    name: str, version: str, body: PredictRequest, request: Request
) -> JSONResponse:
    """Score records with one version of a model (`version` is a number or `latest`)."""
    loaded = await model_for(request, name, parse_version(version))
    return await _score(loaded, body, request, authenticated(request))
