"""`atoll drift`: has the data a published model sees moved since it was trained?

    atoll drift reference MODEL --registry URL [--epsilon 1]   # a new reference, now
    atoll drift check MODEL --registry URL [--epsilon 1]       # now: same histograms, PSI
    atoll drift show MODEL --registry URL [--json]             # the last check (model card)

A model's first reference is recorded with the run that trains it (the nodes whose owners allow
analytics release it on finish; run-config `drift-reference-noise`); `reference` records a new
one. `reference` and `check` run one DP histogram query per contract feature through the SuperLink
(exactly as `atoll query run` does; each node charges its own ledger, purpose analytics, or
refuses); see `server.drift` for the PSI, its noise-aware uncertainty and the flag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

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
from common.run_config import RunConfig

DEFAULT_DELTA: float = RunConfig.default("delta")  # as the run that trained the model
DEFAULT_BINS: int = RunConfig.default("drift-bins")  # as its finish-time reference

drift_app = typer.Typer(
    help="Feature drift of published models: DP reference histograms and PSI checks.",
    no_args_is_help=True,
)
console = Console(stderr=True)

Model = Annotated[str, typer.Argument(help="The published model's name")]
Registry_ = Annotated[str, typer.Option("--registry", help="Coordinator database URL")]
Version = Annotated[int | None, typer.Option(help="Model version (default: the latest)")]
ContractsDir = Annotated[
    Path, typer.Option(help="The SuperLink's contracts directory (`superlink start --contracts`)")
]
RegistryKeys = Annotated[
    list[Path] | None,
    typer.Option(help="Pinned publishing.pub: the model's registry row must verify (repeat)"),
]


def _model(registry: str, name: str, version: int | None, keys: list[Path] | None) -> Any:
    """(name, version) and the contract of a published model, or a clear error."""
    from server.registry import Registry, RegistryError
    from server.registry_signing import RowVerifier

    try:
        verifier = RowVerifier.from_files(keys) if keys else None
        with Registry(registry, verifier=verifier) as reg:
            stored = reg.get(name, version)
    except (RegistryError, LookupError, ValueError) as err:
        fail(str(err))
    return (stored.card.name, stored.card.version), stored.contract


def _asker(registry: str, contract: Any, runner: Runner) -> Any:
    """Runs one query through the SuperLink and returns its stored record."""
    from atoll.runs import APP_DIR
    from server.app_store import SigningKey, publish_app
    from server.drift import DriftError
    from server.query_jobs import QueryRunnerSettings, QuerySubmitter
    from server.query_store import QueryStore

    app = ""
    if runner.signing_key is not None:
        app = publish_app(APP_DIR, runner.app_store_dir, SigningKey.load(runner.signing_key)).spec
    submitter = QuerySubmitter(
        QueryRunnerSettings(
            flwr_home=runner.flwr_home,
            contracts_dir=runner.contracts_dir,
            superlink=runner.superlink,
            ca=runner.ca,
            app=app,
            min_nodes=runner.min_nodes,
        )
    )

    def ask(feature: str, query: Any) -> dict[str, Any]:
        console.print(f"asking every node for the histogram of {escape(feature)} …")
        outcome = submitter.submit(query, contract)
        store = QueryStore(registry)
        try:
            row = store.by_run(outcome.run_id) if outcome.run_id else None
        finally:
            store.close()
        if row is None:
            raise DriftError(
                f"the query for {feature} stored no result (exit {outcome.exit_code}); "
                f"see {outcome.log_path}"
            )
        return row.as_dict()

    return ask


@dataclass(frozen=True)
class Runner:
    superlink: str
    ca: Path
    flwr_home: Path
    contracts_dir: Path
    signing_key: Path | None
    app_store_dir: Path
    min_nodes: int | None


@drift_app.command("reference")
def reference(
    model: Model,
    registry: Registry_,
    version: Version = None,
    epsilon: Annotated[float, typer.Option(min=0.0, help="ε per node for all features")] = 1.0,
    delta: Annotated[float, typer.Option(help="δ the nodes account at")] = DEFAULT_DELTA,
    bins: Annotated[int, typer.Option(min=2, help="Bins of each numeric feature")] = DEFAULT_BINS,
    superlink: SuperLinkAddr = DEFAULTS.superlink,
    ca: CaCert = DEFAULTS.ca,
    flwr_home: CoordinatorHome = DEFAULTS.flwr_home,
    contracts_dir: ContractsDir = DEFAULTS.contracts_dir,
    signing_key: SigningKeyOpt = None,
    app_store_dir: AppStoreDir = DEFAULTS.app_store_dir,
    min_nodes: MinNodes = None,
    registry_public_key: RegistryKeys = None,
) -> None:
    """Record the model's reference histograms (run right after publishing, on training data)."""
    from server.drift import DriftError, DriftStore, record_reference

    if not epsilon > 0:
        fail("--epsilon must be positive")
    key, contract = _model(registry, model, version, registry_public_key)
    runner = Runner(superlink, ca, flwr_home, contracts_dir, signing_key, app_store_dir, min_nodes)
    ask = _asker(registry, contract, runner)
    store = DriftStore(registry)
    try:
        rid = record_reference(
            store, model=key, contract=contract, ask=ask, epsilon=epsilon, delta=delta, bins=bins
        )
    except DriftError as err:
        fail(str(err))
    finally:
        store.close()
    typer.echo(
        f"reference {rid} of {key[0]} v{key[1]}: {len(contract.features)} features, ε={epsilon:g}"
    )


@drift_app.command("check")
def check(
    model: Model,
    registry: Registry_,
    version: Version = None,
    alpha: Annotated[float, typer.Option(help="Family-wise false-flag rate")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap (post-processing)")] = 0,
    epsilon: Annotated[
        float | None,
        typer.Option(min=0.0, help="ε per node for all features (default: the reference's σ)"),
    ] = 1.0,
    delta: Annotated[float, typer.Option(help="δ the nodes account at")] = DEFAULT_DELTA,
    superlink: SuperLinkAddr = DEFAULTS.superlink,
    ca: CaCert = DEFAULTS.ca,
    flwr_home: CoordinatorHome = DEFAULTS.flwr_home,
    contracts_dir: ContractsDir = DEFAULTS.contracts_dir,
    signing_key: SigningKeyOpt = None,
    app_store_dir: AppStoreDir = DEFAULTS.app_store_dir,
    min_nodes: MinNodes = None,
    registry_public_key: RegistryKeys = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Ask every node for the reference's histograms on its current data; PSI per feature."""
    from server.drift import DriftError, DriftStore, run_check

    key, contract = _model(registry, model, version, registry_public_key)
    runner = Runner(superlink, ca, flwr_home, contracts_dir, signing_key, app_store_dir, min_nodes)
    ask = _asker(registry, contract, runner)
    store = DriftStore(registry)
    try:
        _cid, report = run_check(
            store,
            model=key,
            contract=contract,
            ask=ask,
            alpha=alpha,
            seed=seed,
            epsilon=epsilon or None,
            delta=delta,
        )
    except DriftError as err:
        fail(str(err))
    finally:
        store.close()
    _print(key, report, as_json)
    if report["flagged"]:
        raise typer.Exit(1)


@drift_app.command("show")
def show(
    model: Model,
    registry: Registry_,
    version: Version = None,
    registry_public_key: RegistryKeys = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """The model's last drift check (what its model card shows)."""
    from server.drift import DriftStore

    key, _contract = _model(registry, model, version, registry_public_key)
    store = DriftStore(registry)
    try:
        last = store.latest(key[0], key[1], "check")
    finally:
        store.close()
    if last is None:
        fail(f"{key[0]} v{key[1]} has no drift check yet: run `atoll drift check {key[0]}`")
    assert last is not None
    typer.echo(f"last drift check of {key[0]} v{key[1]}: {last.created_at.isoformat()}")
    _print(key, last.report, as_json)


def _print(key: tuple[str, int], report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table("feature", "PSI", "95% interval", "no-drift threshold", "drift")
    for name, f in report["features"].items():
        table.add_row(
            name,
            f"{f['psi']:.4f}",
            f"[{f['psi_low']:.4f}, {f['psi_high']:.4f}]",
            f"{f['threshold']:.4f}",
            "[bold red]yes[/]" if f["flagged"] else "no",
        )
    Console().print(table)
    flagged = ", ".join(report["flagged"]) or "none"
    typer.echo(
        f"{key[0]} v{key[1]}: drift beyond the noise (family-wise α={report['alpha']:g}) in: "
        f"{flagged}"
    )
