"""The federation's long-running processes: the command line, environment and start of each.

SuperLink, app store, SuperNode (with its warm clientapp launcher) and node runtime; each starts
with `atoll.processes.spawn` and is returned once it listens.
"""

from __future__ import annotations

import os
import pwd
import socket
import sys
import time
from pathlib import Path

from atoll.pki import TlsFiles
from atoll.processes import (
    BIN,
    ManagedProcess,
    ProcessFailed,
    ProcessTimeout,
    flower_env,
    spawn,
    wait_for_port,
)
from client.launcher.protocol import SOCKET_ENV
from common.files import toml_value
from server.coordinator_settings import ENV as COORDINATOR_CONFIG_ENV


def superlink_argv(
    *, tls: TlsFiles, port: int, state_db: Path, node_auth: bool = True, host: str = "127.0.0.1"
) -> list[str]:
    """flower-superlink with TLS, persistent state, no runtime installs, node auth."""
    argv = [
        str(BIN / "flower-superlink"),
        "--ssl-ca-certfile", str(tls.ca_cert),
        "--ssl-certfile", str(tls.server_cert),
        "--ssl-keyfile", str(tls.server_key),
        "--host", host,
        "--port", str(port),
        "--database", str(state_db),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    return [*argv, "--enable-supernode-auth"] if node_auth else argv


def start_superlink(
    *,
    tls: TlsFiles,
    port: int,
    state_db: Path,
    log_path: Path,
    node_auth: bool = True,
    host: str = "127.0.0.1",
    app_store: str | None = None,
    coordinator_config: Path | None = None,
) -> ManagedProcess:
    argv = superlink_argv(tls=tls, port=port, state_db=state_db, node_auth=node_auth, host=host)
    env = superlink_env(app_store, tls.ca_cert, coordinator_config)
    proc = spawn("superlink", argv, log_path, env)
    wait_for_port(port, timeout=60, proc=proc)
    return proc


def superlink_env(
    app_store: str | None, ca_cert: Path, coordinator_config: Path | None = None
) -> dict[str, str]:
    """The SuperLink's environment (inherited by the ServerApp it starts); with `app_store`, its
    app fetches ("the Hub") go to Atoll's app store (server/app_store.py) over HTTPS trusting the
    federation's CA; `coordinator_config` is the coordinator's own settings file (database URL,
    audit key: server/coordinator_settings.py) — never a run config."""
    env = flower_env()
    if app_store:
        env["FLWR_SUPERGRID_API_URL"] = f"{app_store.rstrip('/')}/v1"
        env["REQUESTS_CA_BUNDLE"] = str(ca_cert)
    if coordinator_config is not None:
        env[COORDINATOR_CONFIG_ENV] = str(coordinator_config)
    return env


def app_store_argv(
    *, directory: Path, tls: TlsFiles, port: int, host: str = "127.0.0.1"
) -> list[str]:
    """`atoll app-store serve`: HTTPS with the federation's certificate, on the coordinator host."""
    return [
        sys.executable, "-m", "atoll", "app-store", "serve",
        "--dir", str(directory),
        "--host", host,
        "--port", str(port),
        "--certfile", str(tls.server_cert),
        "--keyfile", str(tls.server_key),
    ]  # fmt: skip


def start_app_store(*, directory: Path, tls: TlsFiles, port: int, log_path: Path) -> ManagedProcess:
    proc = spawn(
        "app-store", app_store_argv(directory=directory, tls=tls, port=port), log_path, flower_env()
    )
    wait_for_port(port, timeout=60, proc=proc)
    return proc


def supernode_argv(
    *,
    superlink: str,
    ca_cert: Path,
    private_key: Path | None,
    node_config: dict[str, str | int | float | bool],
    port: int,
    trusted_entities: Path | None = None,
    max_retries: int | None = None,
) -> list[str]:
    """flower-supernode dialling `superlink` over TLS, signing with its key, on its own data."""
    argv = [
        str(BIN / "flower-supernode"),
        "--superlink", superlink,
        "--root-certificates", str(ca_cert),
        "--port", str(port),
        "--node-config", toml_pairs(node_config),
    ]  # fmt: skip
    if max_retries is not None:
        argv += ["--max-retries", str(max_retries)]
    if private_key is not None:
        argv += ["--auth-supernode-private-key", str(private_key)]
    if trusted_entities is not None:
        argv += ["--trusted-entities", str(trusted_entities)]
    return argv


def start_supernode(
    *,
    name: str,
    superlink: str,
    ca_cert: Path,
    private_key: Path | None,
    node_config: dict[str, str | int | float | bool],
    port: int,
    flwr_home: Path,
    log_path: Path,
    trusted_entities: Path | None = None,
    user: str | None = None,
    warm_clientapp: bool = True,
) -> ManagedProcess:
    """A SuperNode; with `user`, it (and every app process it starts) runs as that OS user.

    With `warm_clientapp`, its clientapp launcher (client/launcher) starts beside it — same user,
    same environment, log `NAME.launcher.log` next to the SuperNode's — and only the SuperNode's
    PATH finds the launcher's `flwr-clientapp` shim first; the launcher is the returned
    process's companion (stopped with it)."""
    argv = supernode_argv(
        superlink=superlink,
        ca_cert=ca_cert,
        private_key=private_key,
        node_config=node_config,
        port=port,
        trusted_entities=trusted_entities,
        max_retries=3,
    )
    flwr_home.mkdir(parents=True, exist_ok=True)
    env = flower_env(flwr_home)
    if user is not None:
        env["HOME"] = str(flwr_home)
    zygote = None
    if warm_clientapp:
        from atoll.clientapp_launcher import start_clientapp_launcher, wait_for_launcher

        zygote_log = log_path.with_name(f"{log_path.stem}.launcher.log")
        zygote, env = start_clientapp_launcher(name, flwr_home, env, zygote_log, flwr_home, user)
    if user is not None:
        for path in [flwr_home, *flwr_home.rglob("*")]:
            os.chown(path, pwd.getpwnam(user).pw_uid, -1)
    proc = spawn(f"supernode-{name}", argv, log_path, env, cwd=flwr_home, user=user)
    if zygote is not None:
        proc.companions.append(zygote)
        wait_for_launcher(zygote, env[SOCKET_ENV])
    return proc


def toml_pairs(config: dict[str, str | int | float | bool]) -> str:
    return " ".join(f"{k}={toml_value(v)}" for k, v in config.items())


def runtime_argv(config: Path) -> list[str]:
    """`atoll node runtime`: the owner's process that alone reads the node's data."""
    return [sys.executable, "-m", "atoll", "node", "runtime", "--config", str(config)]


def start_runtime(
    *, name: str, config: Path, socket_path: Path, log_path: Path, timeout: float = 120
) -> ManagedProcess:
    """Start a node runtime and wait until its socket accepts connections."""
    proc = spawn(f"runtime-{name}", runtime_argv(config), log_path, flower_env())
    try:
        _wait_for_socket(proc, name, socket_path, log_path, timeout)
    except BaseException:  # interrupted or failed: never leave the runtime behind
        proc.stop()
        raise
    return proc


def _wait_for_socket(
    proc: ManagedProcess, name: str, socket_path: Path, log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive:
            raise ProcessFailed(
                f"node runtime '{name}' exited with code {proc.returncode}; see {log_path}"
            )
        if socket_path.exists():
            with socket.socket(socket.AF_UNIX) as s:
                if s.connect_ex(str(socket_path)) == 0:
                    return
        if time.monotonic() > deadline:
            raise ProcessTimeout(f"node runtime '{name}' did not listen within {timeout:.0f} s")
        time.sleep(0.1)
