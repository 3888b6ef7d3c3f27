"""Federated analytics for analysts: preview a query's accuracy, submit it, read and export results.

A submission is a run of the signed app through the SuperLink (`server.query_jobs`), exactly what
`atoll query run` does: every node decides it against its owner's contract, limits and budget
before reading data, so nothing here can spend more than the nodes allow. It runs in the
background; `GET /queries/submissions/{id}` says when its result is in (`query_id`). Results are
the coordinator's stored queries (`server.analytics`), with ε per node and 95% intervals.

Guarded by `queries:run`, which only the analyst role holds (`server.api.auth.ROLE_PERMISSIONS`):
governance reviews budgets and audit, apps score, admins manage keys — none of them spends the
nodes' analytics budgets.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Path, Request, status
from fastapi.responses import Response
from pydantic import ValidationError

from common.analytics_math import Query, QueryError, layout, preview
from common.contract import Contract, contract_from_json
from server.analytics import QueryRecord, rows_csv
from server.api.audit_trail import Audited
from server.api.auth import AUTH_RESPONSES, Permission, authenticated, require
from server.api.deps import (
    QueryStoreDep,
    RegistryDep,
    SubmissionsDep,
    get_query_submitter,
)
from server.api.schemas import (
    ErrorOut,
    QueryOut,
    QueryPreviewIn,
    QuerySummaryOut,
    QueryTarget,
    SubmissionOut,
)
from server.query_jobs import execute, stage
from server.registry import Registry

# ids are database integers: one outside a signed 64-bit range is a 422, never a database error
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]

router = APIRouter(
    tags=["analytics"],
    dependencies=[Depends(require(Permission.QUERIES_RUN))],
    responses=AUTH_RESPONSES,
)
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such query or submission."}
}
_INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": "The query does not fit the contract."}
}


def _invalid(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=message[:500])


def _query_and_contract(
    body: QueryTarget, registry: Registry, request: Request
) -> tuple[Query, Contract]:
    """The validated query and the contract it is over (422 naming the problem)."""
    if (body.model is None) == (body.contract_hash is None):
        raise _invalid("give exactly one of model (a published model's name) or contract_hash")
    if body.model is not None:
        contract = registry.get(body.model).contract  # ModelNotFound → 404
    else:
        contract = _staged(request, body.contract_hash or "")
    try:
        query = Query.model_validate(body.spec)
        layout(query, contract, max_bins=10**6)  # each node applies its owner's bin limit
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'query'}: {e['msg']}" for e in err.errors()
        )
        raise _invalid(f"invalid query: {problems}") from None
    except QueryError as err:
        raise _invalid(f"[{err.code}] {err}") from None
    return query, contract


def _staged(request: Request, contract_hash: str) -> Contract:
    """A contract staged on the coordinator (none, if this API submits no queries)."""
    try:
        contracts_dir = get_query_submitter(request).settings.contracts_dir
        contract: Contract | None = contract_from_json(
            (contracts_dir / f"{contract_hash}.json").read_text()
        )
    except (HTTPException, OSError, ValueError):
        contract = None
    if contract is None or contract.hash != contract_hash:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            "no such contract on the coordinator: name a published model instead",
        )
    return contract


@router.post("/queries/preview", responses=_INVALID, dependencies=[Audited("api.query_preview")])
def preview_query(body: QueryPreviewIn, registry: RegistryDep, request: Request) -> dict[str, Any]:
    """Expected 95% interval per cell and the ε each node would spend; nothing is spent."""
    query, contract = _query_and_contract(body, registry, request)
    try:
        return preview(
            query,
            contract,
            nodes=body.nodes,
            delta=body.delta,
            target_half_width=body.target_half_width,
            cell_size=body.cell_size,
        )
    except ValueError as err:
        raise _invalid(str(err)) from None


@router.post(
    "/queries",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SubmissionOut,
    responses={**_INVALID, 503: {"model": ErrorOut, "description": "Submission not set up."}},
)
def submit_query(
    body: QueryTarget,
    request: Request,
    registry: RegistryDep,
    submissions: SubmissionsDep,
    queries: QueryStoreDep,
    background: BackgroundTasks,
) -> SubmissionOut:
    """Run the query on the federation (each node charges its own budget, or refuses); poll
    `GET /queries/submissions/{id}` until it is answered."""
    query, contract = _query_and_contract(body, registry, request)
    submitter = get_query_submitter(request)  # 503 if this API's operator has not set it up
    principal = authenticated(request)
    spec = query.model_dump(mode="json")
    stage(contract, submitter.settings.contracts_dir)
    sid = submissions.add(submitted_by=principal.key_id, contract_hash=contract.hash, spec=spec)
    try:  # before the run: a failed audit write refuses it (503), and nothing runs
        request.app.state.api_audit.record(
            principal,
            "api.query_submit",
            f"query-submission:{sid}",
            method=request.method,
            route="/queries",
            contract_hash=contract.hash,
            spec=spec,
        )
    except Exception:
        submissions.update(sid, status="failed", error="not recorded in the audit log; not run")
        raise
    background.add_task(execute, submissions, queries, submitter, sid, query, contract)
    row = submissions.get(sid)
    assert row is not None
    return SubmissionOut.model_validate(row.as_dict())


@router.get(
    "/queries/submissions/{submission_id}",
    response_model=SubmissionOut,
    responses=_NOT_FOUND,
    dependencies=[Audited("api.query_read")],
)
def get_submission(submission_id: RowId, submissions: SubmissionsDep) -> SubmissionOut:
    """Where a submitted query is: queued, running, answered (with `query_id`) or failed."""
    row = submissions.get(submission_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such submission")
    return SubmissionOut.model_validate(row.as_dict())


def _summary(row: QueryRecord) -> QuerySummaryOut:
    d = row.as_dict()
    return QuerySummaryOut(
        id=d["id"],
        run_id=d["run_id"],
        kind=d["kind"],
        status=d["status"],
        contract=d["contract"],
        participants=d["result"].get("participants", []),
        epsilon_per_node=d["result"].get("epsilon_per_node", {}),
        created_at=d["created_at"],
    )


@router.get(
    "/queries", response_model=list[QuerySummaryOut], dependencies=[Audited("api.query_read")]
)
def list_queries(queries: QueryStoreDep) -> list[QuerySummaryOut]:
    """The stored queries, newest first: kind, status, participants and ε per node."""
    return [_summary(r) for r in queries.all()]


def _record(queries: QueryStoreDep, query_id: int) -> dict[str, Any]:
    row = queries.get(query_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such query")
    return row.as_dict()


@router.get(
    "/queries/{query_id}",
    response_model=QueryOut,
    responses=_NOT_FOUND,
    dependencies=[Audited("api.query_read")],
)
def get_query(query_id: RowId, queries: QueryStoreDep) -> QueryOut:
    """One query: its spec, each node's ε (or refusal), and every cell's estimate and interval."""
    return QueryOut.model_validate(_record(queries, query_id))


@router.get(
    "/queries/{query_id}/export",
    responses={
        **_NOT_FOUND,
        200: {"content": {"text/csv": {}, "application/json": {}}, "description": "The result"},
    },
    dependencies=[Audited("api.query_export")],
)
def export_query(
    query_id: RowId, queries: QueryStoreDep, format: Literal["csv", "json"] = "csv"
) -> Response:
    """CSV rows (cell, statistic, estimate, 95% interval, noisy count, unreliable) or full JSON."""
    record = _record(queries, query_id)
    name = f"query-{query_id}.{format}"
    disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
    if format == "json":
        text = json.dumps(record, indent=2)
        return Response(text, media_type="application/json", headers=disposition)
    return Response(rows_csv(record), media_type="text/csv", headers=disposition)
