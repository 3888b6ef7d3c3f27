"""`atoll superlink` and `atoll app-store`: the coordinator's own processes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from atoll import pki
from atoll.cli_common import console, fail
from atoll.cli_options import DEFAULTS
from atoll.services import (
    superlink_argv,
    superlink_env,
)

superlink_app = typer.Typer(help="Run the coordinator's SuperLink.", no_args_is_help=True)
app_store_app = typer.Typer(
    help="Serve coordinator-signed app builds to the SuperLink.", no_args_is_help=True
)


@app_store_app.command("serve")
def app_store_serve(
    dir_: Annotated[
        Path, typer.Option("--dir", help="Store directory (`atoll run` fills it)")
    ] = DEFAULTS.app_store_dir,
    host: str = DEFAULTS.host,
    port: int = DEFAULTS.app_store_port,
    certfile: Annotated[Path, typer.Option(help="TLS certificate (PEM)")] = DEFAULTS.server_cert,
    keyfile: Annotated[Path, typer.Option(help="TLS private key (PEM)")] = DEFAULTS.server_key,
) -> None:
    """Serve signed app builds to the SuperLink (`atoll superlink start --app-store URL`)."""
    import uvicorn

    from server.app_store import create_store_app

    for path in (certfile, keyfile):
        if not path.is_file():
            fail(f"TLS file {path} not found; `atoll certs create` makes server.crt/server.key")
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
    certs: Annotated[
        Path, typer.Option(help="Directory from `atoll certs create`")
    ] = DEFAULTS.certs_dir,
    state: Annotated[
        Path, typer.Option(help="SuperLink state database (runs survive restarts)")
    ] = Path("runs/superlink-state.db"),
    host: str = DEFAULTS.host,
    port: int = DEFAULTS.superlink_port,
    node_auth: Annotated[bool, typer.Option(help="Admit only registered node keys")] = True,
    app_store: Annotated[
        str | None,
        typer.Option(help="URL of `atoll app-store serve`, where signed app builds come from"),
    ] = DEFAULTS.app_store_url,
    registry: Annotated[
        str,
        typer.Option(
            help="Coordinator database URL (registry, audit); kept on this host, never sent",
            envvar="ATOLL_REGISTRY_URL",
        ),
    ] = DEFAULTS.registry_url,
    audit_key: Annotated[Path, typer.Option(help="Coordinator's audit signing key")] = Path(
        "runs/coordinator-audit/coordinator.pem"
    ),
    publishing_key: Annotated[
        Path,
        typer.Option(
            help="Coordinator's Ed25519 key that signs every registry row (created with its .pub "
            "if missing; pin the .pub with `atoll serve --registry-public-key`)"
        ),
    ] = Path("runs/coordinator-publishing/publishing.pem"),
    contracts: Annotated[
        Path,
        typer.Option(help="Where `atoll run --contracts-dir` stages contracts (found by hash)"),
    ] = DEFAULTS.contracts_dir,
    checkpoint_dir: Annotated[
        Path,
        typer.Option(
            help="Signed checkpoints of the coordinator's audit log, one per run (not beside "
            "the audit key; mount a share from another host)"
        ),
    ] = Path("runs/coordinator-checkpoints"),
) -> None:
    """Start a SuperLink with TLS, node authentication and persistent state (foreground).

    The ServerApp it starts reads the coordinator's own settings (database URL, audit key) from
    a 0600 file beside the state database — never from a run config, which Flower stores and
    forwards to every node."""
    from pydantic import ValidationError

    from server.coordinator_settings import CoordinatorSettings

    tls = pki.tls_files(certs)
    state.parent.mkdir(parents=True, exist_ok=True)
    argv = superlink_argv(
        tls=tls, port=port, state_db=state.resolve(), node_auth=node_auth, host=host
    )
    from server.registry_signing import RegistryKeyError, load_publishing_key

    try:
        load_publishing_key(publishing_key)  # checked (or created) now, not at the first publish
    except RegistryKeyError as err:
        fail(str(err))
    try:
        settings = CoordinatorSettings(
            registry_url=registry,
            audit_key=audit_key.resolve(),
            publishing_key=publishing_key.resolve(),
            contracts_dir=contracts.resolve(),
            checkpoint_dir=checkpoint_dir.resolve(),
        )
    except ValidationError as err:
        fail("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in err.errors()))
    own = settings.write(state.resolve().parent / "coordinator.toml")
    from privacy.audit import AuditError
    from server.coordinator_audit import close_abandoned_runs

    try:  # no ServerApp of ours is alive yet: a run without an end entry was killed
        abandoned = close_abandoned_runs(settings.registry_url, settings.audit_key)
    except AuditError as err:
        fail(f"coordinator audit log ({settings.audit_key}): {err}")
    for run_id in abandoned:
        console.print(f"[yellow]run {run_id} had no end in the audit log: recorded as abandoned[/]")
    os.execve(argv[0], argv, superlink_env(app_store, tls.ca_cert, own))
