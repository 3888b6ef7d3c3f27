"""`atoll`: one command line for operators, node owners and governance.

Sub-commands wrap the real Flower processes; nothing here trains or scores by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from atoll.cli_audit import audit_app
from atoll.cli_budget import budget_app
from atoll.cli_common import DEBUG, AtollGroup, console, fail
from atoll.cli_contract import contract_app
from atoll.cli_coordinator import app_store_app, superlink_app
from atoll.cli_drift import drift_app
from atoll.cli_keys import keys_app as apikey_app
from atoll.cli_node import node_app
from atoll.cli_options import (
    DEFAULTS,
    AppStoreDir,
    CaCert,
    CoordinatorHome,
    SigningKeyOpt,
    SuperLinkAddr,
)
from atoll.cli_pki import certs_app, keys_app
from atoll.cli_query import query_app
from atoll.cli_serve import serve
from atoll.flower_cli import (
    write_connection,
)
from atoll.run_options import _app_default, build_run_config
from common.run_config import MODEL_KINDS, STRATEGY_NAMES, RunConfig

app = typer.Typer(
    cls=AtollGroup,
    help="Atoll: federated churn & propensity models with DP, over Flower.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold data: never print them
)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an expected error too")
    ] = False,
) -> None:
    """Atoll: federated churn & propensity models with DP, over Flower."""
    ctx.meta[DEBUG] = debug


app.add_typer(certs_app, name="certs")
app.add_typer(keys_app, name="keys")
app.add_typer(node_app, name="node")
app.add_typer(superlink_app, name="superlink")
app.add_typer(app_store_app, name="app-store")
app.add_typer(contract_app, name="contract")
app.add_typer(budget_app, name="budget")
app.add_typer(audit_app, name="audit")
app.add_typer(apikey_app, name="apikey")
app.add_typer(query_app, name="query")
app.add_typer(drift_app, name="drift")
app.command()(serve)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TELCO = SHARED_DATA / "Telco-Customer-Churn.csv"
MARKER = ".atoll-federation"


def _progress_runner(fed: Any, config: dict[str, Any]) -> Any:
    """Run `fed.run(config)` (anything with that method) behind a rich progress bar."""
    from atoll.runs import round_of

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        rounds = config.get(RunConfig.key("rounds"), RunConfig.default("rounds"))
        task = progress.add_task("waiting for nodes", total=rounds)

        def on_line(line: str) -> None:
            if r := round_of(line):
                progress.update(task, completed=r[0] - 1, description=f"round {r[0]}/{r[1]}")
            elif "ATOLL published" in line:
                progress.update(task, completed=rounds, description="published")
            elif "ERROR" in line or "did not join" in line:
                progress.console.print(f"[yellow]{line.strip()}[/]")

        return fed.run(config, on_line=on_line)


@app.command("run")
def run_cmd(
    contract: Annotated[Path, typer.Option(help="The federation's data contract")],
    superlink: SuperLinkAddr = DEFAULTS.superlink,
    ca: CaCert = DEFAULTS.ca,
    flwr_home: CoordinatorHome = DEFAULTS.flwr_home,
    rounds: Annotated[int | None, _app_default("rounds")] = None,
    strategy: Annotated[str | None, _app_default("strategy")] = None,
    model: Annotated[str | None, _app_default("model")] = None,
    noise_multiplier: Annotated[float | None, _app_default("noise_multiplier")] = None,
    target_epsilon: Annotated[float | None, _app_default("target_epsilon")] = None,
    sample_rate: Annotated[float | None, _app_default("sample_rate")] = None,
    min_nodes: Annotated[int | None, _app_default("min_nodes")] = None,
    signing_key: SigningKeyOpt = None,
    app_store_dir: AppStoreDir = DEFAULTS.app_store_dir,
    contracts_dir: Annotated[
        Path,
        typer.Option(
            help="The SuperLink's --contracts: the contract is staged there and the run names it "
            "by hash (no coordinator path goes into the run config)"
        ),
    ] = DEFAULTS.contracts_dir,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any other run-config KEY=VALUE (repeat)")
    ] = None,
) -> None:
    """Submit a training run to a running SuperLink, follow it with progress, report the outcome."""
    from atoll.runs import APP_DIR, CONTRACT_PATH_KEY, follow_run
    from server.app_store import SigningKey, publish_app

    flwr_home = flwr_home.resolve()
    app_ref: Path | str = APP_DIR
    if signing_key is not None:
        stored = publish_app(APP_DIR, app_store_dir, SigningKey.load(signing_key))
        app_ref = stored.spec
        console.print(f"signed {stored.spec} (FAB sha256 {stored.fab_hash[:16]}…)")
    write_connection(flwr_home, "atoll", superlink, ca.resolve())
    config = build_run_config(
        {
            "rounds": rounds,
            "strategy": strategy,
            "model": model,
            "noise_multiplier": noise_multiplier,
            "target_epsilon": target_epsilon,
            "sample_rate": sample_rate,
            "min_nodes": min_nodes,
        },
        set_,
    )
    config[CONTRACT_PATH_KEY] = str(contract)  # staged by follow_run, submitted as its hash

    class _Submit:
        def run(self, cfg: dict[str, Any], on_line: Any) -> Any:
            return follow_run(
                flwr_home=flwr_home,
                config=cfg,
                work=flwr_home / "runs",
                log_path=flwr_home / "runs.log",
                on_line=on_line,
                app=app_ref,
                contracts_dir=contracts_dir,
            )

    outcome = _progress_runner(_Submit(), config)
    if outcome.exit_code != 0 or outcome.model_version is None:
        fail(f"run {outcome.run_id} did not publish a model; see {flwr_home / 'runs.log'}")
    console.print(
        f"run {outcome.run_id} published [bold]{outcome.model_name} "
        f"v{outcome.model_version}[/] in {outcome.seconds:.0f} s"
    )


@app.command()
def federate(
    data: Annotated[
        Path, typer.Option(help="CSV holding every silo's rows (split by --partition-by)")
    ] = TELCO,
    contract: Annotated[Path, typer.Option(help="Data contract YAML")] = ROOT
    / "contracts"
    / "telco_churn.yaml",
    partition_by: Annotated[
        str, typer.Option(help="Column whose values define the silos")
    ] = "Contract",
    nodes: Annotated[int, typer.Option(help="Number of SuperNodes (values are grouped)")] = 3,
    rounds: Annotated[int | None, _app_default("rounds")] = None,
    strategy: Annotated[str | None, _app_default("strategy", " | ".join(STRATEGY_NAMES))] = None,
    model: Annotated[str | None, _app_default("model", " | ".join(MODEL_KINDS))] = None,
    noise_multiplier: Annotated[float | None, _app_default("noise_multiplier")] = None,
    target_epsilon: Annotated[
        float | None,
        _app_default("target_epsilon", "> 0: nodes calibrate noise to spend at most this"),
    ] = None,
    local_epochs: Annotated[int | None, _app_default("local_epochs")] = None,
    sample_rate: Annotated[
        float | None, _app_default("sample_rate", "Poisson sampling rate per DP-SGD step")
    ] = None,
    learning_rate: Annotated[float | None, _app_default("learning_rate")] = None,
    eval_noise: Annotated[
        float | None,
        _app_default("eval_noise", "σ of the noise on evaluation histograms (0: no evaluation)"),
    ] = None,
    node_cap: Annotated[
        float, typer.Option(help=f"Each node's cumulative ε cap (δ={RunConfig.default('delta')})")
    ] = 10.0,
    id_from_row: Annotated[bool, typer.Option(help="Data has no id column: number rows")] = False,
    workdir: Annotated[
        Path, typer.Option(help="Certs, keys, state, logs and registry go here (recreated)")
    ] = Path("runs/federation"),
    json_out: Annotated[
        Path | None, typer.Option(help="Write a machine-readable summary here")
    ] = None,
    serve_api: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Keep the API up until Ctrl-C")
    ] = False,
    api_port: int = 0,
) -> None:
    """Run a federation locally: TLS SuperLink, authenticated SuperNodes, DP, publish, serve."""
    run_federation(
        data=data,
        contract=contract,
        partition_by=partition_by,
        nodes=nodes,
        node_cap=node_cap,
        id_from_row=id_from_row,
        workdir=workdir,
        json_out=json_out,
        serve_api=serve_api,
        api_port=api_port,
        config=build_run_config(
            {
                "rounds": rounds,
                "strategy": strategy,
                "model": model,
                "noise_multiplier": noise_multiplier,
                "target_epsilon": target_epsilon,
                "local_epochs": local_epochs,
                "sample_rate": sample_rate,
                "learning_rate": learning_rate,
                "eval_noise": eval_noise,
            }
        ),
    )


def _fresh_workdir(workdir: Path) -> None:
    """A federation starts from nothing; only a directory we created earlier is ever removed."""
    if workdir.exists():
        if not (workdir / MARKER).exists() and any(workdir.iterdir()):
            fail(f"{workdir} exists and was not made by atoll; choose another --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("made by `atoll federate`; removed by the next run\n")


def _demo_keys(fed: Any) -> Path:
    """One API key per role for the local federation, written once with mode 600."""
    path = fed.workdir / "api-keys.json"
    keys = {role: fed.create_api_key(role) for role in ("app", "analyst", "governance", "admin")}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(keys, f, indent=2)
    return path


def run_federation(
    *,
    data: Path,
    contract: Path,
    partition_by: str,
    nodes: int,
    node_cap: float,
    id_from_row: bool,
    workdir: Path,
    json_out: Path | None,
    serve_api: bool,
    api_port: int,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Partition → coordinator → nodes (with ledgers) → run with progress → API → summary."""
    from atoll.federation import LocalFederation
    from atoll.partition import partition_csv
    from atoll.summary import build_summary, print_summary
    from privacy.ledger import Policy

    if not data.exists():
        fail(f"data file {data} not found (real data sets: ../shared/data; or use `atoll synth`)")
    _fresh_workdir(workdir)
    with LocalFederation(workdir) as fed:
        console.print(f"[bold]Atoll[/] local federation in {fed.workdir}")
        parts = partition_csv(data, partition_by, nodes, fed.workdir / "silos")
        fed.start_coordinator()
        console.print(f"SuperLink (TLS, node auth) at {fed.address}")
        policy = Policy(cap_epsilon=node_cap, delta=RunConfig.default("delta"))
        extra: dict[str, Any] = {"id-from-row": True} if id_from_row else {}
        for part in parts:
            fed.add_node(part.name, part.path, contract, policy=policy, **extra)
        console.print(f"{len(parts)} SuperNodes started, each on its own silo (ε cap {node_cap})")
        run_config = {**config, "min-nodes": len(parts), "contract-path": str(contract)}
        outcome = _progress_runner(fed, run_config)
        if outcome.exit_code != 0 or outcome.model_version is None:
            fail(f"the run did not publish a model (exit {outcome.exit_code}); logs: {fed.logs}")
        api_url = fed.start_api(api_port or None)
        keys_file = _demo_keys(fed)
        summary = build_summary(fed, outcome, parts, api_url, partition_by)
        summary["api"]["keys_file"] = str(keys_file)
        print_summary(summary, console)
        console.print(
            f"API keys (one per role) in {keys_file} (mode 600). Try:\n"
            f"  curl --cacert {fed.tls.ca_cert if fed.tls else ''} "
            f'-H "Authorization: Bearer $(jq -r .analyst {keys_file})" {api_url}/models'
        )
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(summary, indent=2))
            console.print(f"summary written to {json_out}")
        if serve_api:
            console.print(f"[bold green]serving[/] {api_url}/docs — Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                fed.processes["api"].popen.wait()
    return summary


@app.command()
def demo(
    workdir: Path = Path("runs/demo"),
    serve_api: Annotated[bool, typer.Option("--serve/--no-serve")] = True,
    rounds: Annotated[int | None, _app_default("rounds")] = None,
) -> None:
    """The main job: Telco churn data in 3 silos (by contract type), DP FedAvg rounds, publish,
    serve."""
    config = build_run_config({"rounds": rounds})
    if TELCO.exists():
        data, contract, partition_by, nodes = TELCO, "telco_churn.yaml", "Contract", 3
    else:
        from common.synth import write_csv

        console.print(
            f"[yellow]{TELCO} not found: using the synthetic multi-department data set[/]"
        )
        data = write_csv(Path(tempfile.mkdtemp()) / "synthetic.csv", 6000, 0, 4)
        contract, partition_by, nodes = "synthetic.yaml", "department", 4
    run_federation(
        data=data,
        contract=ROOT / "contracts" / contract,
        partition_by=partition_by,
        nodes=nodes,
        workdir=workdir,
        json_out=workdir / "summary.json",
        serve_api=serve_api,
        api_port=0,
        node_cap=10.0,
        id_from_row=False,
        config=config,
    )


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="CSV to write")] = Path("runs/synthetic.csv"),
    rows: int = 10000,
    seed: int = 0,
    departments: int = 4,
) -> None:
    """Write a synthetic multi-department customer data set (contract: contracts/synthetic.yaml)."""
    from common.synth import write_csv

    write_csv(out, rows, seed, departments)
    console.print(f"wrote {rows} rows to {out}")


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="atoll")
    sys.exit(0)
