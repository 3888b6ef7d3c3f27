"""`atoll budget`: privacy budgets for node owners (their ledger) and governance (federation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from privacy.ledger import Ledger, LedgerUnavailable, PeriodCap, Policy

budget_app = typer.Typer(
    help="Privacy budgets: node ledgers and the federation view.", no_args_is_help=True
)
console = Console()

StateDir = Annotated[Path, typer.Option(help="The node's state directory (holds its ledger)")]
Cap = Annotated[float, typer.Option(help="Cap on cumulative ε over everything")]
MaxRun = Annotated[float | None, typer.Option(help="Most ε one run may take")]
TaskCaps = Annotated[list[str] | None, typer.Option(help="TASK=EPSILON (repeat)")]
Tasks = Annotated[list[str] | None, typer.Option(help="Allowed task (repeat; default any)")]
Purposes = Annotated[list[str] | None, typer.Option(help="Allowed purpose (repeat)")]
PeriodCapOpt = Annotated[
    str | None,
    typer.Option(
        help="Also cap ε per UTC calendar period: PERIOD=EPSILON, PERIOD month|quarter|year"
    ),
]


def _name_epsilon(option: str, expected: str, item: str) -> tuple[str, float]:
    """`NAME=EPSILON` from a CLI option, or a usage error naming the option and the form."""
    name, _, value = item.partition("=")
    try:
        return name, float(value)
    except ValueError:
        raise typer.BadParameter(f"{option} expects {expected}, got '{item}'") from None


def _policy(
    cap: float,
    delta: float,
    max_run: float | None,
    task_cap: list[str] | None,
    tasks: list[str] | None,
    purposes: list[str] | None,
    period_cap: str | None = None,
) -> Policy:
    caps = dict(_name_epsilon("--task-cap", "TASK=EPSILON", item) for item in task_cap or [])
    period = None
    if period_cap:
        expected = "month|quarter|year=EPSILON"
        name, eps = _name_epsilon("--period-cap", expected, period_cap)
        if name not in ("month", "quarter", "year"):
            raise typer.BadParameter(f"--period-cap expects {expected}, got '{period_cap}'")
        period = {"period": name, "epsilon": eps}
    try:
        return Policy(
            cap_epsilon=cap,
            delta=delta,
            max_run_epsilon=max_run,
            task_caps=caps,
            allowed_tasks=tasks or None,
            allowed_purposes=purposes or ["training", "evaluation"],
            period_cap=PeriodCap.model_validate(period) if period else None,
        )
    except ValidationError as err:  # e.g. a cap <= 0: say which field, not a traceback
        raise typer.BadParameter(str(err)) from None


def _open(state_dir: Path) -> Ledger:
    try:
        return Ledger(state_dir)
    except LedgerUnavailable as err:
        console.print(f"[bold red]ledger unavailable:[/] {err}")
        raise typer.Exit(2) from None


@budget_app.command("init")
def init(
    state_dir: StateDir,
    node_name: Annotated[str, typer.Option(help="This node's name")],
    cap: Cap,
    delta: float = 1e-5,
    max_run: MaxRun = None,
    task_cap: TaskCaps = None,
    task: Tasks = None,
    purpose: Purposes = None,
    period_cap: PeriodCapOpt = None,
) -> None:
    """Create this node's ledger with the owner's policy (refuses to reset an existing one)."""
    policy = _policy(cap, delta, max_run, task_cap, task, purpose, period_cap)
    try:
        ledger = Ledger.initialize(state_dir, node_name, policy)
        ledger.audit_log().append(
            "operator",
            "policy.changed",
            f"node:{node_name}",
            {"policy": policy.model_dump(), "initial": True},
        )
    except LedgerUnavailable as err:
        console.print(f"[bold red]refused:[/] {err}")
        raise typer.Exit(2) from None
    console.print(f"ledger created in {state_dir.resolve()} (cap ε={cap} at δ={delta})")


@budget_app.command("policy")
def set_policy(
    state_dir: StateDir,
    cap: Cap,
    delta: float = 1e-5,
    max_run: MaxRun = None,
    task_cap: TaskCaps = None,
    task: Tasks = None,
    purpose: Purposes = None,
    period_cap: PeriodCapOpt = None,
) -> None:
    """Set a new policy on this node (kept as a new version; the coordinator cannot do this)."""
    ledger = _open(state_dir)
    policy = _policy(cap, delta, max_run, task_cap, task, purpose, period_cap)
    ledger.set_policy(policy)
    ledger.audit_log().append(
        "operator", "policy.changed", f"node:{ledger.node_name}", {"policy": policy.model_dump()}
    )
    console.print("policy updated (recorded in the node's audit log)")


@budget_app.command("show")
def show(
    state_dir: StateDir,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """This node's budget: spent, reserved, cap, remaining, and ε per run (from its ledger)."""
    status = _open(state_dir).status()
    if as_json:
        typer.echo(status.model_dump_json(indent=2))
        return
    console.print(
        f"node [bold]{status.node}[/]: spent ε={status.spent_epsilon:.3f}, reserved "
        f"{status.reserved_epsilon:.3f}, cap {status.cap_epsilon:.3f}, remaining "
        f"{status.remaining_epsilon:.3f} (δ={status.delta:g}; {status.events} releases; "
        f"accountant {status.accountant})"
    )
    if status.period is not None:
        p = status.period
        console.print(
            f"this {p.period} (since {p.start:%Y-%m-%d} UTC): spent ε={p.spent_epsilon:.3f}, "
            f"reserved {p.reserved_epsilon:.3f}, cap {p.cap_epsilon:.3f}, "
            f"remaining {p.remaining_epsilon:.3f}"
        )
    table = Table("run", "task", "status", "planned ε", "spent ε", "started")
    for r in status.runs:
        table.add_row(
            r.run_id,
            r.task,
            r.status,
            f"{r.planned_epsilon:.3f}",
            f"{r.spent_epsilon:.3f}",
            r.created_at.isoformat(timespec="seconds"),
        )
    console.print(table)


@budget_app.command("refusals")
def refusals(state_dir: StateDir) -> None:
    """Explain every request this node refused: what was asked, what remained, why."""
    rows = _open(state_dir).refusals()
    if not rows:
        console.print("no refusals")
    for r in rows:
        console.print(
            f"[bold]{r['at']}[/] run {r['run_id']} ({r['task']}, {r['purpose']}): "
            f"[yellow]{r['code']}[/] — {r['message']}"
        )


@budget_app.command("federation")
def federation(
    registry: Annotated[str, typer.Option(help="Coordinator database URL")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The coordinator's view: what every node reported spending or refusing, per run."""
    from server.spend_reports import SpendReports

    reports = SpendReports(registry)
    rows: list[dict[str, Any]] = [
        {
            "run_id": r.run_id,
            "node": r.node,
            "status": r.status,
            "epsilon_run": r.epsilon_run,
            "epsilon_total": r.epsilon_total,
            "cap": r.cap,
            "delta": r.delta,
            "reason": r.reason,
        }
        for r in reports.rows()
    ]
    reports.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("run", "node", "status", "ε run", "ε total", "cap", "reason")
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        table.add_row(
            r["run_id"],
            r["node"],
            r["status"],
            fmt(r["epsilon_run"]),
            fmt(r["epsilon_total"]),
            fmt(r["cap"]),
            (r["reason"] or "")[:80],
        )
    console.print(table)
