"""Privacy budgets as the coordinator knows them: what each node reported spending, per run.

Each node's own ledger is the authority (it enforces its cap); these figures are the latest
totals nodes reported at the end of each run, plus refusals. Governance only.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel

from server.api.audit_trail import Audited
from server.api.auth import AUTH_RESPONSES, Permission, require
from server.spend_reports import SpendReports

router = APIRouter(
    tags=["privacy"],
    dependencies=[Depends(require(Permission.BUDGETS_READ)), Audited("api.budget_read")],
    responses=AUTH_RESPONSES,
)


class RunSpend(BaseModel):
    run_id: str
    task: str
    status: str  # participated | refused | failed
    epsilon_run: float | None
    epsilon_total_after: float | None
    reason: str | None
    at: str


class NodeBudget(BaseModel):
    node: str
    delta: float | None
    cap_epsilon: float | None
    spent_epsilon: float | None
    remaining_epsilon: float | None
    runs: list[RunSpend]


class RunPrivacy(BaseModel):
    run_id: str
    nodes: list[RunSpend | dict]
    participants: int
    refused: int
    max_epsilon: float | None


def get_reports(request: Request) -> SpendReports:
    return request.app.state.spend_reports


ReportsDep = Annotated[SpendReports, Depends(get_reports)]


def _spend(r) -> RunSpend:  # noqa: ANN001 - a SpendReport row
    return RunSpend(
        run_id=r.run_id,
        task=r.task,
        status=r.status,
        epsilon_run=r.epsilon_run,
        epsilon_total_after=r.epsilon_total,
        reason=r.reason,
        at=r.created_at.isoformat(),
    )


def _budgets(reports: SpendReports) -> list[NodeBudget]:
    by_node: dict[str, list] = {}
    for row in reports.rows():
        by_node.setdefault(row.node, []).append(row)
    out = []
    for node, rows in sorted(by_node.items()):
        reported = [r for r in rows if r.epsilon_total is not None]
        last = reported[-1] if reported else None
        cap = last.cap if last else None
        spent = last.epsilon_total if last else None
        out.append(
            NodeBudget(
                node=node,
                delta=last.delta if last else None,
                cap_epsilon=cap,
                spent_epsilon=spent,
                remaining_epsilon=None if cap is None or spent is None else max(cap - spent, 0.0),
                runs=[_spend(r) for r in rows],
            )
        )
    return out


@router.get("/budgets", response_model=list[NodeBudget])
def list_budgets(reports: ReportsDep) -> list[NodeBudget]:
    """Every node's cumulative ε (as last reported), cap, remaining, δ and history per run."""
    return _budgets(reports)


@router.get("/budgets/{node}", response_model=NodeBudget)
def node_budget(node: str, reports: ReportsDep) -> NodeBudget:
    """One node's budget and per-run history."""
    for budget in _budgets(reports):
        if budget.node == node:
            return budget
    raise HTTPException(status.HTTP_404_NOT_FOUND, "no budget reports for that node")


@router.get("/runs/{run_id}/privacy", response_model=RunPrivacy)
def run_privacy(run_id: str, reports: ReportsDep) -> RunPrivacy:
    """What one run cost each node (and who refused it, why)."""
    rows = reports.rows(run_id=run_id)
    if not rows:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no privacy reports for that run")
    spends = [{"node": r.node, **_spend(r).model_dump()} for r in rows]
    eps = [r.epsilon_run for r in rows if r.epsilon_run is not None]
    return RunPrivacy(
        run_id=run_id,
        nodes=spends,
        participants=sum(r.status == "participated" for r in rows),
        refused=sum(r.status == "refused" for r in rows),
        max_epsilon=max(eps) if eps else None,
    )
