"""`atoll node`: what a data owner runs — the node runtime, and the SuperNode that relays to it.

    atoll node init --name N --data FILE --contract C.yaml --out node.toml   # write the config
    atoll budget init --state-dir STATE --cap 5                              # the owner's budget
    atoll node runtime --config node.toml                                    # the runtime alone
    atoll node start --config node.toml --key K --superlink H:P --ca CA      # runtime + SuperNode

In production run the runtime and the SuperNode as two users (deploy/systemd): the SuperNode
and every app it starts can then reach the runtime's socket and nothing else of the node.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from atoll.cli_common import fail
from atoll.cli_options import DEFAULTS, CoordinatorHome
from atoll.clientapp_launcher import start_clientapp_launcher, wait_for_launcher
from atoll.flower_cli import register_node, write_connection
from atoll.processes import ManagedProcess, flower_env
from atoll.services import supernode_argv
from client.launcher.protocol import SOCKET_ENV
from common.files import write_private

node_app = typer.Typer(
    help="Run a node: its runtime (holds the data) and the SuperNode that relays to it.",
    no_args_is_help=True,
)
console = Console(stderr=True)

ConfigFile = Annotated[Path, typer.Option("--config", help="The node's node.toml (owner-written)")]
SuperLinkAddr = Annotated[str, typer.Option(help="SuperLink (or fleet proxy) address host:port")]
CaCert = Annotated[Path, typer.Option(help="CA certificate of the coordinator")]


def _load(config: Path):  # noqa: ANN202 - NodeConfig, imported late (keeps `atoll --help` fast)
    from client.node import NodeError
    from client.runtime.config import NodeConfig

    try:
        return NodeConfig.load(config)
    except NodeError as err:
        fail(err.reason)


@node_app.command("init")
def node_init(
    name: Annotated[str, typer.Option(help="This node's name (as registered by the coordinator)")],
    data: Annotated[str, typer.Option(help="CSV/Parquet path or SQLAlchemy URL (no password)")],
    contract: Annotated[Path, typer.Option(help="This node's copy of the data contract")],
    out: Annotated[Path, typer.Option(help="Where to write node.toml")] = Path("node.toml"),
    state_dir: Annotated[Path, typer.Option(help="Ledger, keys and audit log")] = Path("state"),
    socket: Annotated[Path, typer.Option(help="The runtime's local socket")] = Path("node.sock"),
    socket_group: Annotated[str, typer.Option(help="Group allowed to connect (0660)")] = "",
    size_bucket: Annotated[str, typer.Option(help="Public size range, e.g. 1000-2000")] = "",
    trusted_app_key: Annotated[
        Path | None,
        typer.Option(
            help="The coordinator's trusted-entities file: run only builds whose signed "
            "manifest verifies (app id, version, expiry)"
        ),
    ] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            help="Signed checkpoints of this node's audit log after every run (outside "
            "--state-dir; a share on another host)"
        ),
    ] = None,
    table: str = "",
    query: str = "",
) -> None:
    """Write a node.toml for this silo (then `atoll budget init`, then `atoll node start`)."""
    from pydantic import ValidationError

    from client.runtime.config import DataConfig, NodeConfig

    if out.exists():
        fail(f"{out} exists; edit it or choose another --out")
    try:
        cfg = NodeConfig(
            name=name,
            contract=contract.resolve(),
            state_dir=state_dir.resolve(),
            socket=socket.resolve(),
            socket_group=socket_group,
            size_bucket=size_bucket,
            trusted_app_key=trusted_app_key.resolve() if trusted_app_key else None,
            checkpoint_dir=checkpoint_dir.resolve() if checkpoint_dir else None,
            data=DataConfig(
                source=data if "://" in data else str(Path(data).resolve()),
                table=table,
                query=query,
            ),
        )
    except ValidationError as err:
        fail(
            "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'node config'}: "
                + str(e["msg"]).removeprefix("Value error, ")
                for e in err.errors()
            )
        )
    write_private(out, cfg.to_toml())  # names the data source: the owner's alone
    console.print(f"wrote {out}; next: `atoll budget init --state-dir {cfg.state_dir} --cap EPS`")


@node_app.command("runtime")
def node_runtime(
    config: ConfigFile,
    debug: Annotated[bool, typer.Option(help="Show tracebacks")] = False,
) -> None:
    """Serve this node's runtime on its local socket (foreground, until SIGTERM)."""
    from client.node import NodeError
    from client.runtime.grpc_server import serve

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True
    )
    cfg = _load(config)
    try:
        serve(cfg)
    except NodeError as err:
        if debug:
            raise
        fail(err.reason)
    except (OSError, KeyError) as err:  # socket path, group name
        if debug:
            raise
        fail(f"cannot listen on {cfg.socket}: {err}")


@node_app.command("start")
def node_start(
    config: ConfigFile,
    key: Annotated[Path, typer.Option(help="Private key from `atoll keys node`")],
    superlink: SuperLinkAddr = DEFAULTS.superlink,
    ca: CaCert = DEFAULTS.ca,
    port: Annotated[int, typer.Option(help="Local port of the SuperNode's app runtime")] = 9094,
    flwr_home: Annotated[Path, typer.Option(help="The SuperNode's Flower home")] = Path(
        "runs/node-flwr"
    ),
    trusted_entities: Annotated[
        Path | None,
        typer.Option(help="Run only apps signed by these keys (the coordinator's file)"),
    ] = None,
    cold_clientapp: Annotated[
        bool,
        typer.Option(
            "--cold-clientapp",
            help="Let Flower start a fresh flwr-clientapp interpreter per message (no warm "
            "launcher: ~1 s more per message)",
        ),
    ] = False,
) -> None:
    """Start the node runtime, then the SuperNode beside it; stop both on Ctrl-C.

    The SuperNode gets only the runtime's socket: no data path, no credentials. Unless
    --cold-clientapp, a warm launcher (client/launcher, log FLWR_HOME/launcher.log) forks each
    message's flwr-clientapp from a process that has Flower imported already; the app itself
    still comes from the FAB Flower installs.
    """
    cfg = _load(config)
    zygote: ManagedProcess | None = None
    runtime = subprocess.Popen(
        [sys.executable, "-m", "atoll", "node", "runtime", "--config", str(config.resolve())],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not cfg.socket.exists():
            if runtime.poll() is not None:
                fail(f"the node runtime exited with code {runtime.returncode}")
            if time.monotonic() > deadline:
                fail(f"the node runtime did not open {cfg.socket} within 120 s")
            time.sleep(0.2)
        argv = supernode_argv(
            superlink=superlink,
            ca_cert=ca.resolve(),
            private_key=key.resolve(),
            node_config={"runtime": f"unix:{cfg.socket}"},
            port=port,
            trusted_entities=trusted_entities.resolve() if trusted_entities else None,
        )
        if trusted_entities is None:
            console.print(
                "[yellow]warning:[/] no --trusted-entities: this node runs any app the SuperLink "
                "sends (the runtime still enforces every limit)"
            )
        flwr_home.mkdir(parents=True, exist_ok=True)
        home = flwr_home.resolve()
        env = flower_env(home)
        if not cold_clientapp:
            zygote, env = start_clientapp_launcher("node", home, env, home / "launcher.log")
        supernode = subprocess.Popen(argv, env=env)
        if zygote is not None:
            wait_for_launcher(zygote, env[SOCKET_ENV])
        try:
            supernode.wait()
        except KeyboardInterrupt:
            supernode.terminate()
            supernode.wait(timeout=30)
    finally:
        runtime.terminate()
        runtime.wait(timeout=30)
        if zygote is not None:
            zygote.stop()


@node_app.command("register")
def node_register(
    public_key: Annotated[Path, typer.Argument(help="The node's NAME.pub")],
    name: Annotated[str, typer.Option(help="Name shown in model cards")],
    superlink: SuperLinkAddr = DEFAULTS.superlink,
    ca: CaCert = DEFAULTS.ca,
    flwr_home: CoordinatorHome = DEFAULTS.flwr_home,
    registry: Annotated[
        str,
        typer.Option(
            help="Coordinator database (admin audit log, node names)", envvar="ATOLL_REGISTRY_URL"
        ),
    ] = DEFAULTS.registry_url,
) -> None:
    """Admit a node's public key to the federation under NAME (run on the coordinator)."""
    from privacy.audit import AuditError
    from server.api.audit_trail import operator_log
    from server.node_names import NodeNames

    write_connection(flwr_home.resolve(), "atoll", superlink, ca.resolve())
    if not public_key.is_file():
        fail(f"public key {public_key} not found; the node owner makes it with `atoll keys node`")
    fingerprint = hashlib.sha256(public_key.read_bytes().split()[1]).hexdigest()
    try:
        log = operator_log(registry)
    except AuditError as err:
        fail(str(err))
    details = {"name": name, "public_key_sha256": fingerprint}
    log.append("operator", "node.registered", f"node:{name}", details)  # before it happens
    node_id = register_node(flwr_home.resolve(), "atoll", public_key.resolve(), name)
    NodeNames(registry).add(node_id, name, fingerprint)
    console.print(f"registered node '{name}' as node id {node_id} (in the admin audit log)")
