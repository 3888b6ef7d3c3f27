"""Score records with a published model: probability, reason codes and warnings per record."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status

from server.api.auth import AUTH_RESPONSES, Permission, Principal, PrincipalDep, require
from server.api.deps import LoadedModel, latest_model, versioned_model
from server.api.schemas import (
    ErrorOut,
    Prediction,
    PredictRequest,
    PredictResponse,
    ReasonCodeOut,
    RecordsInvalidOut,
)
from server.api.scoring import RecordsInvalid

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


def _audit(
    request: Request, principal: Principal, loaded: LoadedModel, n: int, outcome: str
) -> None:
    """Who scored how many records with which model version (never a value); fails closed."""
    request.app.state.api_audit.record(
        principal,
        "api.predict",
        f"model:{loaded.card.name}/v{loaded.card.version}",
        route=getattr(request.scope.get("route"), "path", "?"),
        records=n,
        outcome=outcome,
        model=loaded.card.name,
        version=loaded.card.version,
    )


def _score(
    loaded: LoadedModel, body: PredictRequest, request: Request, principal: Principal
) -> PredictResponse:
    limit: int = request.app.state.max_records
    if len(body.records) > limit:
        raise HTTPException(
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"{len(body.records)} records in one request but the limit is {limit}; "
            "split the batch into smaller requests",
        )
    try:
        scores = loaded.scorer.score(body.records, top_k=body.top_k)
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
            len(body.records),
            loaded.card.name,
            loaded.card.version,
            len(exc.problems),
        )
        _audit(request, principal, loaded, len(body.records), "rejected")
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=shown) from None
    log.info("scored %d records with %s v%d", len(scores), loaded.card.name, loaded.card.version)
    _audit(request, principal, loaded, len(scores), "scored")
    return PredictResponse(
        model=loaded.card.name,
        version=loaded.card.version,
        contract_hash=loaded.card.contract_hash,
        predictions=[
            Prediction(
                probability=s.probability,
                reason_codes=[
                    ReasonCodeOut(
                        feature=r.feature, contribution=r.contribution, direction=r.direction
                    )
                    for r in s.reason_codes
                ],
                warnings=s.warnings,
            )
            for s in scores
        ],
    )


@router.post("/{name}/predict", response_model=PredictResponse, responses=_RESPONSES)
def predict_latest(
    body: PredictRequest,
    request: Request,
    loaded: Annotated[LoadedModel, Depends(latest_model)],
    principal: PrincipalDep,
) -> PredictResponse:
    """Score records with the latest version of a model."""
    return _score(loaded, body, request, principal)


@router.post(
    "/{name}/versions/{version}/predict", response_model=PredictResponse, responses=_RESPONSES
)
def predict_version(
    body: PredictRequest,
    request: Request,
    loaded: Annotated[LoadedModel, Depends(versioned_model)],
    principal: PrincipalDep,
) -> PredictResponse:
    """Score records with one version of a model (`version` is a number or `latest`)."""
    return _score(loaded, body, request, principal)
