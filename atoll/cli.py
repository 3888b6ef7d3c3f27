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
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from atoll import pki
from atoll.cli_audit import audit_app
from atoll.cli_budget import budget_app
from atoll.cli_keys import keys_app as apikey_app
from atoll.cli_node import node_app
from atoll.cli_query import query_app
from atoll.processes import (
    superlink_argv,
    superlink_env,
    write_connection,
)
from common.run_config import MODEL_KINDS, STRATEGY_NAMES, RunConfig

app = typer.Typer(
    help="Atoll: federated churn & propensity models with DP, over Flower.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold data: never print them
)
certs_app = typer.Typer(help="TLS certificates for the coordinator.", no_args_is_help=True)
keys_app = typer.Typer(help="Node authentication keys.", no_args_is_help=True)
superlink_app = typer.Typer(help="Run the coordinator's SuperLink.", no_args_is_help=True)
app_store_app = typer.Typer(
    help="Serve coordinator-signed app builds to the SuperLink.", no_args_is_help=True
)
contract_app = typer.Typer(help="Check data contracts and data against them.", no_args_is_help=True)
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
console = Console(stderr=True)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TELCO = SHARED_DATA / "Telco-Customer-Churn.csv"
MARKER = ".atoll-federation"

SuperLinkAddr = Annotated[str, typer.Option(help="SuperLink address host:port")]
CaCert = Annotated[Path, typer.Option(help="CA certificate of the coordinator")]
CoordinatorHome = Annotated[Path, typer.Option(help="Coordinator's flwr CLI home")]


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


# ---- run-config options ----------------------------------------------------------------------
# An option that sets a run-config key defaults to None, "the app's default": the CLI leaves it out
# of the run config and the app's own default applies (common/run_config.py, the one place each
# default is written). The help still shows that default.
def _app_default(field: str, help: str = "") -> Any:
    """A typer option for RunConfig field `field`, unset by default."""
    shown = escape(f"[default: the app's, {RunConfig.model_fields[field].default}]")  # not markup
    return typer.Option(help=f"{help} {shown}" if help else shown, show_default=False)


def build_run_config(options: dict[str, Any], sets: list[str] | None = None) -> dict[str, Any]:
    """The run config the CLI submits: `options` by RunConfig field name, only those given (None:
    not given, the app's default applies), then each `--set KEY=VALUE` (KEY a run-config key)."""
    config = {RunConfig.key(name): value for name, value in options.items() if value is not None}
    keys = RunConfig.defaults()
    for item in sets or []:
        key, _, value = item.partition("=")
        if key not in keys:
            _fail(f"--set {item}: '{key}' is not a run-config key ({', '.join(keys)})")
        config[key] = _parse_value(value)
    return config


# ---- certificates and keys -------------------------------------------------------------------
@certs_app.command("create")
def certs_create(
    out: Annotated[Path, typer.Option(help="Directory for ca.crt, server.crt, server.key")] = Path(
        "deploy/certs"
    ),
    host: Annotated[list[str] | None, typer.Option(help="Names/IPs nodes dial (repeat)")] = None,
    days: int = 365,
) -> None:
    """Create a CA and a server certificate covering every address nodes dial."""
    files = pki.create_tls(out, tuple(host or pki.DEFAULT_HOSTS), days)
    console.print(
        f"CA {files.ca_cert}\ncertificate {files.server_cert}\nkey {files.server_key} (mode 600)",
        soft_wrap=True,
    )


@keys_app.command("node")
def keys_node(
    name: Annotated[str, typer.Argument(help="Node name, e.g. marketing")],
    out: Annotated[Path, typer.Option(help="Directory for NAME and NAME.pub")] = Path(
        "deploy/keys"
    ),
) -> None:
    """Create a node's ECDSA P-384 key pair (OpenSSH format) for SuperNode authentication."""
    private, public = pki.create_node_key(out, name)
    console.print(
        f"private key {private} (mode 600) — keep it on the node\n"
        f"public key {public} — give it to the coordinator",
        soft_wrap=True,
    )


@keys_app.command("app-signing")
def keys_app_signing(
    out: Annotated[
        Path, typer.Option(help="Directory for app-signing and trusted-entities.yaml")
    ] = Path("deploy/keys/app-signing"),
) -> None:
    """Create the coordinator's Ed25519 app-signing key and the trusted-entities file for nodes."""
    files = pki.create_app_signing_key(out)
    console.print(
        f"private key {files.private_key} (mode 600) — keep it on the coordinator\n"
        f"trusted entities {files.trusted_entities} — give it to every node owner "
        "(`atoll node start --trusted-entities`)",
        soft_wrap=True,
    )


# ---- coordinator -------------------------------------------------------------------------------
@app_store_app.command("serve")
def app_store_serve(
    dir_: Annotated[
        Path, typer.Option("--dir", help="Store directory (`atoll run` fills it)")
    ] = Path("runs/app-store"),
    host: str = "127.0.0.1",
    port: int = 9095,
    certfile: Annotated[Path, typer.Option(help="TLS certificate (PEM)")] = Path(
        "deploy/certs/server.crt"
    ),
    keyfile: Annotated[Path, typer.Option(help="TLS private key (PEM)")] = Path(
        "deploy/certs/server.key"
    ),
) -> None:
    """Serve signed app builds to the SuperLink (`atoll superlink start --app-store URL`)."""
    import uvicorn

    from server.app_store import create_store_app

    for path in (certfile, keyfile):
        if not path.is_file():
            _fail(f"TLS file {path} not found; `atoll certs create` makes server.crt/server.key")
    dir_.mkdir(parents=True, exist_ok=True)
    uvicorn.run(
        create_store_app(dir_),
        host=host,
        port=port,
        log_level="info",  # the access log shows which build the SuperLink fetched, and when
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
    )


@superlink_app.command("start")
def superlink_start(
    certs: Annotated[Path, typer.Option(help="Directory from `atoll certs create`")] = Path(
        "deploy/certs"
    ),
    state: Annotated[
        Path, typer.Option(help="SuperLink state database (runs survive restarts)")
    ] = Path("runs/superlink-state.db"),
    host: str = "127.0.0.1",
    port: int = 9093,
    node_auth: Annotated[bool, typer.Option(help="Admit only registered node keys")] = True,
    app_store: Annotated[
        str | None,
        typer.Option(help="URL of `atoll app-store serve`, where signed app builds come from"),
    ] = "https://127.0.0.1:9095",
    registry: Annotated[
        str,
        typer.Option(
            help="Coordinator database URL (registry, audit); kept on this host, never sent",
            envvar="ATOLL_REGISTRY_URL",
        ),
    ] = "sqlite:///runs/registry.db",
    audit_key: Annotated[Path, typer.Option(help="Coordinator's audit signing key")] = Path(
        "runs/coordinator-audit/coordinator.pem"
    ),
) -> None:
    """Start a SuperLink with TLS, node authentication and persistent state (foreground).

    The ServerApp it starts reads the coordinator's own settings (database URL, audit key) from
    a 0600 file beside the state database — never from a run config, which Flower stores and
    forwards to every node."""
    from server.coordinator_settings import CoordinatorSettings

    tls = pki.tls_files(certs)
    state.parent.mkdir(parents=True, exist_ok=True)
    argv = superlink_argv(
        tls=tls, port=port, state_db=state.resolve(), node_auth=node_auth, host=host
    )
    settings = CoordinatorSettings(registry_url=registry, audit_key=audit_key.resolve())
    own = settings.write(state.resolve().parent / "coordinator.toml")
    os.execve(argv[0], argv, superlink_env(app_store, tls.ca_cert, own))


# ---- contract --------------------------------------------------------------------------------
@contract_app.command("check")
def contract_check(
    contract: Annotated[Path, typer.Argument(help="Contract YAML")],
    data: Annotated[
        str | None, typer.Option(help="Optional data to validate (counts only are shown)")
    ] = None,
) -> None:
    """Validate a contract, and optionally a data set against it (prints the quality report)."""
    from client.data_source import read_records
    from client.validation import validate
    from common.contract import ContractError, load_contract

    try:
        c = load_contract(contract)
    except ContractError as err:
        _fail(str(err))
    console.print(
        f"contract {c.name} v{c.version} ({c.task}), {len(c.features)} features, hash {c.hash}"
    )
    if data:
        report = validate(read_records(data), c).report
        typer.echo(report.model_dump_json(indent=2))


@contract_app.command("draft")
def contract_draft(
    data: Annotated[Path, typer.Option(help="Your own data file (CSV/Parquet) to draft from")],
    label: Annotated[
        str | None, typer.Option(help="Label column (default: a column named churn, y, ...)")
    ] = None,
    positive: Annotated[
        str | None, typer.Option(help="The label's positive value (default: Yes/1/true/...)")
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option("--id", help="Customer id column (default: a unique column named ...id)"),
    ] = None,
    task: Annotated[str, typer.Option(help="churn or propensity")] = "churn",
    name: Annotated[str | None, typer.Option(help="Contract name (default: from the file)")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the draft here (default: standard output)")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --out file")] = False,
) -> None:
    """Propose a contract from your own file; every data-derived value is marked for REVIEW."""
    from client.data_source import DataSourceError, read_records
    from common.contract_draft import REVIEW_WARNING, DraftError, draft_contract

    if not data.is_file():
        _fail(escape(f"data file '{data}' not found (or not a file)"))
    if out is not None and out.exists() and not force:
        _fail(escape(f"'{out}' exists: choose another --out, or --force to overwrite it"))
    try:
        draft = draft_contract(
            read_records(data),
            label=label,
            positive=positive,
            id_column=id_column,
            task=task,
            name=name,
            source=data.name,
        )
    except (DataSourceError, DraftError) as err:
        _fail(escape(str(err)))
    if out is None:
        typer.echo(draft.yaml, nl=False)
    else:
        out.write_text(draft.yaml, encoding="utf-8")
        console.print(f"draft contract written to {escape(str(out))}")
    console.print(f"[bold yellow]REVIEW before sharing:[/] {escape(REVIEW_WARNING)}")
    console.print(
        f"{len(draft.review)} item(s) marked '# REVIEW' in the draft"
        + (f"; dropped: {escape(', '.join(draft.dropped))}" if draft.dropped else "")
    )


# ---- serving ---------------------------------------------------------------------------------
@app.command()
def serve(
    registry: Annotated[
        str, typer.Option(help="Registry SQLAlchemy URL")
    ] = "sqlite:///runs/registry.db",
    host: str = "127.0.0.1",
    port: int = 8080,
    certfile: Annotated[
        Path | None, typer.Option(help="TLS certificate (PEM): serve HTTPS (with --keyfile)")
    ] = None,
    keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    insecure_http: Annotated[
        bool,
        typer.Option(
            "--insecure-http",
            help="Allow plain HTTP on a non-loopback address (API keys would cross the network "
            "in clear text)",
        ),
    ] = False,
    audit_key: Annotated[
        Path | None,
        typer.Option(
            help="The API's Ed25519 audit key (created only on first start, while the api log is "
            "empty; default beside a SQLite registry)"
        ),
    ] = None,
    audit_public_key: Annotated[
        list[Path] | None,
        typer.Option(
            help="Pinned public keys of the coordinator's and nodes' logs for GET /audit/verify "
            "(e.g. coordinator.pub; repeat)"
        ),
    ] = None,
    api_audit_public_key: Annotated[
        list[Path] | None,
        typer.Option(
            help="Pinned public keys of the api log (repeat for rotated keys); the API's own "
            "key must be one of them"
        ),
    ] = None,
    admin_audit_public_key: Annotated[
        list[Path] | None,
        typer.Option(help="Pinned public keys of the admin (operator) log (repeat)"),
    ] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory (off-host: a mounted share) for signed checkpoints of the api and "
            "admin logs; GET /audit/verify uses the newest"
        ),
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option(min=1, help="Checkpoint a log after this many new entries")
    ] = 1000,
    checkpoint_minutes: Annotated[
        float, typer.Option(min=0.01, help="... or this many minutes after the last checkpoint")
    ] = 10.0,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="API worker processes; more than 1 needs --rate-limit-url (the per-key rate "
            "limit must be shared, or each worker would allow the full rate)",
        ),
    ] = 1,
    rate_limit_url: Annotated[
        str | None,
        typer.Option(
            help="Redis URL for per-key rate limits shared by all workers, e.g. "
            "redis://127.0.0.1:6379/0 (default: in process)"
        ),
    ] = None,
    rate_per_second: Annotated[
        float, typer.Option(min=0.001, help="Requests per second per API key")
    ] = 20.0,
    rate_burst: Annotated[int, typer.Option(min=1, help="Burst per API key")] = 40,
) -> None:
    """Serve the scoring API; every route but /health needs an API key (`atoll apikey`)."""
    import ipaddress

    import uvicorn

    from privacy.audit import AuditError
    from server.api.app import create_app, dispose

    if (certfile is None) != (keyfile is None):
        _fail("give both --certfile and --keyfile to serve HTTPS, or neither for plain HTTP")
    for path in (certfile, keyfile):
        if path is not None and not path.is_file():
            _fail(f"TLS file {path} not found; `atoll certs create` makes server.crt/server.key")
    if certfile is None and not insecure_http:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            _fail(
                f"refusing plain HTTP on {host}: API keys and scored records would cross the "
                "network unencrypted; pass --certfile and --keyfile (`atoll certs create`), bind "
                "127.0.0.1 behind a TLS proxy, or add --insecure-http if you really mean it"
            )
    if workers > 1 and rate_limit_url is None:
        _fail(
            f"--workers {workers} needs --rate-limit-url redis://HOST:6379/0: each worker is its "
            "own process, and without a shared store every one of them would allow each key the "
            "full rate"
        )
    try:
        api = create_app(
            registry,
            audit_key=audit_key,
            audit_public_keys=audit_public_key,
            api_public_keys=api_audit_public_key,
            admin_public_keys=admin_audit_public_key,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every_entries=checkpoint_every,
            checkpoint_every_minutes=checkpoint_minutes,
            rate_limit_url=rate_limit_url,
            rate_per_second=rate_per_second,
            rate_burst=rate_burst,
        )
    except (AuditError, ValueError) as exc:
        _fail(str(exc))
    if not api_audit_public_key:
        console.print(
            "[yellow]warning:[/] no --api-audit-public-key: GET /audit/verify?log=api has no "
            "pinned key to verify the API's own log with"
        )
    tls: dict[str, Any] = {
        "ssl_certfile": str(certfile) if certfile else None,
        "ssl_keyfile": str(keyfile) if keyfile else None,
    }
    if workers == 1:
        uvicorn.run(api, host=host, port=port, log_level="warning", **tls)
        return
    # Several processes: each worker builds the same app from the same settings (checked above,
    # signing key created if this is the first start), passed as ATOLL_* variables.
    os.environ.update(api.state.settings.to_env())
    dispose(api)
    uvicorn.run(
        "server.api.app:app_from_env",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level="warning",
        **tls,
    )


# ---- the main job ----------------------------------------------------------------------------
def _progress_runner(fed: Any, config: dict[str, Any]) -> Any:
    """Run `fed.run(config)` (anything with that method) behind a rich progress bar."""
    from atoll.federation import round_of

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
    superlink: SuperLinkAddr = "127.0.0.1:9093",
    ca: CaCert = Path("deploy/certs/ca.crt"),
    flwr_home: CoordinatorHome = Path("runs/coordinator-flwr"),
    rounds: Annotated[int | None, _app_default("rounds")] = None,
    strategy: Annotated[str | None, _app_default("strategy")] = None,
    model: Annotated[str | None, _app_default("model")] = None,
    noise_multiplier: Annotated[float | None, _app_default("noise_multiplier")] = None,
    target_epsilon: Annotated[float | None, _app_default("target_epsilon")] = None,
    sample_rate: Annotated[float | None, _app_default("sample_rate")] = None,
    min_nodes: Annotated[int | None, _app_default("min_nodes")] = None,
    signing_key: Annotated[
        Path | None,
        typer.Option(help="App-signing key (`atoll keys app-signing`): submit a signed build"),
    ] = None,
    app_store_dir: Annotated[
        Path, typer.Option(help="Directory `atoll app-store serve` serves")
    ] = Path("runs/app-store"),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any other run-config KEY=VALUE (repeat)")
    ] = None,
) -> None:
    """Submit a training run to a running SuperLink, follow it with progress, report the outcome."""
    from atoll.federation import APP_DIR, follow_run
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
            "contract_path": str(contract),
        },
        set_,
    )

    class _Submit:
        def run(self, cfg: dict[str, Any], on_line: Any) -> Any:
            return follow_run(
                flwr_home=flwr_home,
                config=cfg,
                work=flwr_home / "runs",
                log_path=flwr_home / "runs.log",
                on_line=on_line,
                app=app_ref,
            )

    outcome = _progress_runner(_Submit(), config)
    if outcome.exit_code != 0 or outcome.model_version is None:
        _fail(f"run {outcome.run_id} did not publish a model; see {flwr_home / 'runs.log'}")
    console.print(
        f"run {outcome.run_id} published [bold]{outcome.model_name} "
        f"v{outcome.model_version}[/] in {outcome.seconds:.0f} s"
    )


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


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
            _fail(f"{workdir} exists and was not made by atoll; choose another --workdir")
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
    from atoll.federation import LocalFederation, partition_csv
    from atoll.summary import build_summary, print_summary
    from privacy.ledger import Policy

    if not data.exists():
        _fail(f"data file {data} not found (real data sets: ../shared/data; or use `atoll synth`)")
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
            _fail(f"the run did not publish a model (exit {outcome.exit_code}); logs: {fed.logs}")
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
