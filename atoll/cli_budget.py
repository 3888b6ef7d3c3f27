"""`atoll budget`: privacy budgets for node owners (their ledger) and governance (federation)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from privacy.audit import AuditError
from privacy.ledger import Ledger, LedgerUnavailable, PeriodCap, Policy, RequestLimits

budget_app = typer.Typer(
    help="Privacy budgets: node ledgers and the federation view.", no_args_is_help=True
)
console = Console()

StateDir = Annotated[Path, typer.Option(help="The node's state directory (holds its ledger)")]
Cap = Annotated[float, typer.Option(help="Cap on cumulative ε over everything")]
Delta = Annotated[float, typer.Option(help="δ at which every ε is computed and capped")]
MaxRun = Annotated[float | None, typer.Option(help="Most ε one run may take")]
TaskCaps = Annotated[list[str] | None, typer.Option(help="TASK=EPSILON (repeat)")]
Tasks = Annotated[list[str] | None, typer.Option(help="Allowed task (repeat; default any)")]
Purposes = Annotated[list[str] | None, typer.Option(help="Allowed purpose (repeat)")]
PurposeCaps = Annotated[
    list[str] | None,
    typer.Option(
        help="PURPOSE=EPSILON (repeat): cap one purpose's ε apart from the total, e.g. "
        "analytics=1 (binds analytics/… too)"
    ),
]
PeriodCapOpt = Annotated[
    str | None,
    typer.Option(
        help="Also cap ε per UTC calendar period: PERIOD=EPSILON, PERIOD month|quarter|year"
    ),
]
_D = RequestLimits()  # the defaults, shown in --help
MaxWeightNorm = Annotated[
    float | None,
    typer.Option(
        help=f"Largest L2 norm of incoming global weights [default {_D.max_weight_norm:g}]"
    ),
]
MinExpectedBatch = Annotated[
    float | None,
    typer.Option(
        help=f"Smallest expected batch, rows × sample rate [default {_D.min_expected_batch:g}]"
    ),
]
MaxLocalEpochs = Annotated[
    int | None,
    typer.Option(help=f"Most local epochs per round [default {_D.max_local_epochs}]"),
]
MaxTotalRounds = Annotated[
    int | None,
    typer.Option(help=f"Most rounds one run may announce [default {_D.max_total_rounds}]"),
]
MaxEvalBins = Annotated[
    int | None,
    typer.Option(help=f"Most bins of an evaluation histogram [default {_D.max_eval_bins}]"),
]
MinNoise = Annotated[
    float | None,
    typer.Option(
        help="Smallest noise multiplier, DP-SGD and evaluation alike "
        f"[default {_D.min_noise_multiplier:g}]"
    ),
]
AllowedModels = Annotated[
    list[str] | None,
    typer.Option(
        "--allowed-model",
        help=f"Model this node agrees to train (repeat) [default {', '.join(_D.allowed_models)}]",
    ),
]

# Which option set each policy field (so a bad value is reported by the name the owner typed).
_OPTIONS = {
    "cap_epsilon": "--cap",
    "delta": "--delta",
    "max_run_epsilon": "--max-run",
    "task_caps": "--task-cap",
    "allowed_tasks": "--task",
    "allowed_purposes": "--purpose",
    "period_cap": "--period-cap",
    "purpose_caps": "--purpose-cap",
    "epsilon": "--period-cap",
    "max_weight_norm": "--max-weight-norm",
    "min_expected_batch": "--min-expected-batch",
    "max_local_epochs": "--max-local-epochs",
    "max_total_rounds": "--max-total-rounds",
    "max_eval_bins": "--max-eval-bins",
    "min_noise_multiplier": "--min-noise",
    "allowed_models": "--allowed-model",
}


def _usage_error(err: ValidationError) -> typer.BadParameter:
    """One line per bad value: the option, what is wrong, what was given."""
    lines = []
    for e in err.errors():
        named = [_OPTIONS[str(part)] for part in e["loc"] if str(part) in _OPTIONS]
        option = named[-1] if named else ".".join(str(p) for p in e["loc"])
        lines.append(f"{option}: {e['msg']} (got {e.get('input')!r})")
    return typer.BadParameter("; ".join(lines))


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
    period_cap: str | None,
    limits: dict[str, object],
    purpose_cap: list[str] | None = None,
) -> Policy:
    caps = dict(_name_epsilon("--task-cap", "TASK=EPSILON", item) for item in task_cap or [])
    by_purpose = dict(
        _name_epsilon("--purpose-cap", "PURPOSE=EPSILON", item) for item in purpose_cap or []
    )
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
            purpose_caps=by_purpose,
            limits=RequestLimits.model_validate({k: v for k, v in limits.items() if v is not None}),
        )
    except ValidationError as err:  # e.g. a cap <= 0: say which option, not a traceback
        raise _usage_error(err) from None


def _limits(
    max_weight_norm: float | None,
    min_expected_batch: float | None,
    max_local_epochs: int | None,
    max_total_rounds: int | None,
    max_eval_bins: int | None,
    min_noise: float | None,
    allowed_model: list[str] | None,
) -> dict[str, object]:
    return {
        "max_weight_norm": max_weight_norm,
        "min_expected_batch": min_expected_batch,
        "max_local_epochs": max_local_epochs,
        "max_total_rounds": max_total_rounds,
        "max_eval_bins": max_eval_bins,
        "min_noise_multiplier": min_noise,
        "allowed_models": tuple(allowed_model) if allowed_model else None,
    }


@contextmanager
def _ledger_errors(what: str = "ledger unavailable") -> Iterator[None]:
    """A broken or missing ledger (or audit log) is a clear message and exit 2, no traceback."""
    try:
        yield
    except LedgerUnavailable as err:
        console.print(f"[bold red]{what}:[/] {escape(str(err))}")
        raise typer.Exit(2) from None
    except AuditError as err:
        console.print(f"[bold red]audit log:[/] {escape(str(err))}")
        raise typer.Exit(2) from None


def _describe_limits(limits: RequestLimits) -> str:
    return (
        f"weight L2 norm ≤ {limits.max_weight_norm:g}, expected batch ≥ "
        f"{limits.min_expected_batch:g}, local epochs ≤ {limits.max_local_epochs}, total rounds "
        f"≤ {limits.max_total_rounds}, evaluation bins ≤ {limits.max_eval_bins}, noise "
        f"multiplier ≥ {limits.min_noise_multiplier:g}, models: "
        f"{', '.join(limits.allowed_models) or 'none'}"
    )


@budget_app.command("init")
def init(
    state_dir: StateDir,
    node_name: Annotated[str, typer.Option(help="This node's name")],
    cap: Cap,
    delta: Delta = 1e-5,
    max_run: MaxRun = None,
    task_cap: TaskCaps = None,
    task: Tasks = None,
    purpose: Purposes = None,
    period_cap: PeriodCapOpt = None,
    purpose_cap: PurposeCaps = None,
    max_weight_norm: MaxWeightNorm = None,
    min_expected_batch: MinExpectedBatch = None,
    max_local_epochs: MaxLocalEpochs = None,
    max_total_rounds: MaxTotalRounds = None,
    max_eval_bins: MaxEvalBins = None,
    min_noise: MinNoise = None,
    allowed_model: AllowedModels = None,
) -> None:
    """Create this node's ledger with the owner's policy (refuses to reset an existing one)."""
    limits = _limits(
        max_weight_norm,
        min_expected_batch,
        max_local_epochs,
        max_total_rounds,
        max_eval_bins,
        min_noise,
        allowed_model,
    )
    policy = _policy(cap, delta, max_run, task_cap, task, purpose, period_cap, limits, purpose_cap)
    with _ledger_errors("refused"):
        Ledger.initialize(state_dir, node_name, policy).close_db()
    console.print(
        f"ledger created in {escape(str(state_dir.resolve()))} (cap ε={cap} at δ={delta})"
    )
    console.print(f"request limits: {_describe_limits(policy.limits)}")
    console.print(
        "back up the whole state directory: ledger.key and ledger.anchor.json are needed "
        "with the database, and none of them can be re-created"
    )


@budget_app.command("policy")
def set_policy(
    state_dir: StateDir,
    cap: Cap,
    delta: Delta = 1e-5,
    max_run: MaxRun = None,
    task_cap: TaskCaps = None,
    task: Tasks = None,
    purpose: Purposes = None,
    period_cap: PeriodCapOpt = None,
    purpose_cap: PurposeCaps = None,
    max_weight_norm: MaxWeightNorm = None,
    min_expected_batch: MinExpectedBatch = None,
    max_local_epochs: MaxLocalEpochs = None,
    max_total_rounds: MaxTotalRounds = None,
    max_eval_bins: MaxEvalBins = None,
    min_noise: MinNoise = None,
    allowed_model: AllowedModels = None,
) -> None:
    """Replace this node's policy (options not given take their defaults; the coordinator cannot).

    The new policy is journalled in the ledger and recorded in the node's audit log.
    """
    limits = _limits(
        max_weight_norm,
        min_expected_batch,
        max_local_epochs,
        max_total_rounds,
        max_eval_bins,
        min_noise,
        allowed_model,
    )
    policy = _policy(cap, delta, max_run, task_cap, task, purpose, period_cap, limits, purpose_cap)
    with _ledger_errors():
        ledger = Ledger(state_dir)
        try:
            ledger.set_policy(policy)
        finally:
            ledger.close_db()
    console.print("policy updated (journalled in the ledger and recorded in the node's audit log)")
    console.print(f"request limits: {_describe_limits(policy.limits)}")


@budget_app.command("show")
def show(
    state_dir: StateDir,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """This node's budget: spent, reserved, cap, remaining, limits, and ε per run (its ledger)."""
    with _ledger_errors():
        ledger = Ledger(state_dir)
        try:
            status = ledger.status()
        finally:
            ledger.close_db()
    if as_json:
        typer.echo(status.model_dump_json(indent=2))
        return
    console.print(
        f"node [bold]{escape(status.node)}[/]: spent ε={status.spent_epsilon:.3f}, reserved "
        f"{status.reserved_epsilon:.3f}, cap {status.cap_epsilon:.3f}, remaining "
        f"{status.remaining_epsilon:.3f} (δ={status.delta:g}; {status.events} releases; "
        f"accountant {status.accountant})"
    )
    console.print(
        f"ε (at δ={status.delta:g}) covers every release this node makes: "
        f"{'; '.join(status.covers)}"
    )
    for cap in status.purposes:
        console.print(
            escape(
                f"purpose {cap.purpose}: spent ε={cap.spent_epsilon:.3f}, reserved "
                f"{cap.reserved_epsilon:.3f}, cap {cap.cap_epsilon:.3f}, remaining "
                f"{cap.remaining_epsilon:.3f}"
            )
        )
    if status.period is not None:
        p = status.period
        console.print(
            f"this {p.period} (since {p.start:%Y-%m-%d} UTC): spent ε={p.spent_epsilon:.3f}, "
            f"reserved {p.reserved_epsilon:.3f}, cap {p.cap_epsilon:.3f}, "
            f"remaining {p.remaining_epsilon:.3f}"
        )
    policy = status.policy
    max_run = "none" if policy.max_run_epsilon is None else f"{policy.max_run_epsilon:g}"
    caps = ", ".join(f"{t}={e:g}" for t, e in policy.task_caps.items()) or "none"
    tasks = ", ".join(policy.allowed_tasks) if policy.allowed_tasks is not None else "any"
    purposes = ", ".join(policy.allowed_purposes)
    by_purpose = ", ".join(f"{p}={e:g}" for p, e in policy.purpose_caps.items()) or "none"
    console.print(
        escape(
            f"policy: most ε per run {max_run}; task caps {caps}; tasks {tasks}; "
            f"purposes {purposes}; purpose caps {by_purpose}"
        )
    )
    console.print(f"request limits: {_describe_limits(policy.limits)}")
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
    with _ledger_errors():
        ledger = Ledger(state_dir)
        try:
            rows = ledger.refusals()
        finally:
            ledger.close_db()
    if not rows:
        console.print("no refusals")
    for r in rows:
        console.print(
            f"[bold]{r['at']}[/] run {escape(r['run_id'])} ({r['task']}, {r['purpose']}): "
            f"[yellow]{r['code']}[/] — {escape(r['message'])}"
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
