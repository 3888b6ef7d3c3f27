"""`atoll query`: private segment statistics across the federation's nodes.

    atoll query preview --contract C --spec '{"kind": "rate", "field": "Churn",
        "group_by": ["InternetService"], "epsilon": 0.5}' --nodes 3     # accuracy, nothing spent
    atoll query run --contract C --registry URL --spec ... [--superlink/--ca/--flwr-home]
    atoll query show --registry URL [--id N]
    atoll query export --registry URL --id N [--format csv|json] [--out FILE]

A query (JSON, `common.analytics_math.Query`): `kind` count | rate | sum | mean | histogram |
quantile; `field`; `group_by` (≤ 2 categorical/binary features); `filters` ([{field, values}] or
[{field, low, high}]); `bins`; `quantiles`; `epsilon` (per node) or `noise_multiplier`;
`min_count` (cells whose noisy count is below it are flagged unreliable).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from atoll.cli_common import fail
from atoll.cli_options import (
    DEFAULTS,
    AppStoreDir,
    CaCert,
    CoordinatorHome,
    MinNodes,
    SigningKeyOpt,
    SuperLinkAddr,
)

query_app = typer.Typer(
    help="Federated analytics: DP segment statistics, charged to each node's budget.",
    no_args_is_help=True,
)
console = Console(stderr=True)

Spec = Annotated[str, typer.Option(help="The query as JSON, or @FILE holding it")]
Registry = Annotated[str, typer.Option(help="Coordinator database URL (registry)")]


def _load(spec: str, contract_path: Path) -> tuple[Any, Any]:
    from pydantic import ValidationError

    from common.analytics_math import Query, QueryError, layout
    from common.contract import ContractError, load_contract

    text = Path(spec[1:]).read_text() if spec.startswith("@") else spec
    try:
        contract = load_contract(contract_path)
        query = Query.model_validate_json(text)
        layout(query, contract, max_bins=10**6)
    except (ContractError, QueryError) as err:
        fail(str(err))
    except ValidationError as err:
        fail(
            "invalid query: "
            + "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'query'}: {e['msg']}" for e in err.errors()
            )
        )
    return query, contract


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return " × ".join(map(str, v)) or "(all)"
    return str(v)


@query_app.command("preview")
def preview(
    contract: Annotated[Path, typer.Option(help="The federation's data contract")],
    spec: Spec,
    nodes: Annotated[int, typer.Option(min=1, help="How many nodes will answer")] = 3,
    delta: Annotated[float, typer.Option(help="δ the nodes account at (their policy's)")] = 1e-5,
    target_half_width: Annotated[
        float | None,
        typer.Option(help="Also give the ε that reaches this 95% half-width per cell"),
    ] = None,
    cell_size: Annotated[
        float | None, typer.Option(help="Rate/mean: the cell size the target is meant for")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Expected 95% intervals per cell and the ε each node would spend — before anything runs."""
    from common.analytics_math import preview as preview_of

    query, c = _load(spec, contract)
    try:
        out = preview_of(
            query,
            c,
            nodes=nodes,
            delta=delta,
            target_half_width=target_half_width,
            cell_size=cell_size,
        )
    except ValueError as err:
        fail(str(err))
    eps, sigma = out["epsilon_per_node"], out["noise_multiplier"]
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"{query.kind} over {out['cells']} cell(s), {nodes} node(s), δ={delta:g}")
    typer.echo(f"each node spends ε={eps:.4g} (noise multiplier σ={sigma:.4g})")
    for name, h in out["half_width"].items():
        typer.echo(f"  95% interval of each summed {name}: ±{h:.4g}")
    for n, h in out.get("ratio_half_width", {}).items():
        typer.echo(f"  {query.kind} in a cell of {n} customers: ±{h:.4g} (worst case)")
    if "for_target" in out:
        t = out["for_target"]
        typer.echo(
            f"for ±{target_half_width:g}: ε={t['epsilon_per_node']:.4g} per node "
            f"(σ={t['noise_multiplier']:.4g})"
        )


@query_app.command("run")
def run(
    contract: Annotated[Path, typer.Option(help="The federation's data contract")],
    registry: Registry,
    spec: Spec,
    superlink: SuperLinkAddr = DEFAULTS.superlink,
    ca: CaCert = DEFAULTS.ca,
    flwr_home: CoordinatorHome = DEFAULTS.flwr_home,
    min_nodes: MinNodes = None,
    signing_key: SigningKeyOpt = None,
    app_store_dir: AppStoreDir = DEFAULTS.app_store_dir,
    contracts_dir: Annotated[
        Path, typer.Option(help="The SuperLink's --contracts (the contract is staged there)")
    ] = DEFAULTS.contracts_dir,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any other run-config KEY=VALUE (repeat)")
    ] = None,
) -> None:
    """Submit the query as a run of the signed app (SuperLink, TLS, node auth) and show it."""
    from atoll.cli import build_run_config
    from atoll.flower_cli import write_connection
    from atoll.runs import APP_DIR, CONTRACT_PATH_KEY, follow_run
    from server.app_store import SigningKey, publish_app

    query, _c = _load(spec, contract)
    flwr_home = flwr_home.resolve()
    app_ref: Path | str = APP_DIR
    if signing_key is not None:
        stored = publish_app(APP_DIR, app_store_dir, SigningKey.load(signing_key))
        app_ref = stored.spec
    write_connection(flwr_home, "atoll", superlink, ca.resolve())
    config = build_run_config(
        {
            "min_nodes": min_nodes,
            "query": query.model_dump_json(),
        },
        set_,
    )
    config[CONTRACT_PATH_KEY] = str(contract)  # staged by follow_run, submitted as its hash
    outcome = follow_run(
        flwr_home=flwr_home,
        config=config,
        work=flwr_home / "runs",
        log_path=flwr_home / "runs.log",
        app=app_ref,
        contracts_dir=contracts_dir,
    )
    record = _store_lookup(registry, run_id=outcome.run_id)
    if record is None:
        fail(f"run {outcome.run_id} stored no query result; see {flwr_home / 'runs.log'}")
    _print(record)
    if record["status"] != "answered":
        raise typer.Exit(1)


def _store_lookup(registry: str, *, run_id: str | None = None, qid: int | None = None) -> Any:
    from server.analytics import QueryStore

    store = QueryStore(registry)
    try:
        row = store.get(qid) if qid is not None else (store.by_run(run_id) if run_id else None)
        return None if row is None else row.as_dict()
    finally:
        store.close()


def _print(record: dict[str, Any]) -> None:
    typer.echo(
        f"query {record['id']} (run {record['run_id']}): {record['kind']} — {record['status']}"
    )
    typer.echo(f"spec: {json.dumps(record['spec'])}")
    for name, node in sorted(record["nodes"].items()):
        if node["status"] == "answered":
            typer.echo(
                f"  node {name}: ε={_fmt(node.get('epsilon'))} "
                f"(σ={_fmt(node.get('noise_multiplier'))})"
            )
        else:
            typer.echo(f"  node {name}: {node['status']} — {node.get('reason', '')}")
    rows = record["result"].get("rows", [])
    if rows:
        typer.echo(f"{'cell':<40} {'statistic':<16} {'estimate':>10}  95% interval")
    for r in rows:
        flag = "  (unreliable)" if r["unreliable"] else ""
        typer.echo(
            f"{_fmt(r['cell']):<40} {r['statistic']:<16} {_fmt(r['estimate']):>10}  "
            f"[{_fmt(r['low'])}, {_fmt(r['high'])}]{flag}"
        )


@query_app.command("show")
def show(
    registry: Registry,
    qid: Annotated[int | None, typer.Option("--id", help="One query (default: list them)")] = None,
) -> None:
    """List stored queries, or show one with its ε per node and every cell's interval."""
    if qid is not None:
        record = _store_lookup(registry, qid=qid)
        if record is None:
            fail(f"no query {qid} in this registry")
        _print(record)
        return
    from server.analytics import QueryStore

    store = QueryStore(registry)
    try:
        for row in store.all():
            eps = row.result.get("epsilon_per_node", {})
            typer.echo(
                f"{row.id:>5}  run {row.run_id:<22} {row.kind:<10} {row.status:<9} "
                f"nodes {len(eps)}  ε/node "
                + (", ".join(f"{n}={e:.3g}" for n, e in eps.items()) or "-")
            )
    finally:
        store.close()


@query_app.command("export")
def export(
    registry: Registry,
    qid: Annotated[int, typer.Option("--id", help="The query to export")],
    fmt: Annotated[str, typer.Option("--format", help="csv (rows) or json (everything)")] = "csv",
    out: Annotated[Path | None, typer.Option(help="File (default: standard output)")] = None,
) -> None:
    """Export a query's result: CSV rows (cell, statistic, estimate, interval) or full JSON."""
    record = _store_lookup(registry, qid=qid)
    if record is None:
        fail(f"no query {qid} in this registry")
    if fmt == "json":
        text = json.dumps(record, indent=2)
    elif fmt == "csv":
        from server.analytics import rows_csv

        text = rows_csv(record)
    else:
        fail(f"--format {fmt}: use csv or json")
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        out.write_text(text)
        console.print(f"query {qid} written to {escape(str(out))}")
