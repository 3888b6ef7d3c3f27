"""Start, watch and stop the real Flower processes (SuperLink, SuperNodes, `flwr` CLI).

Every process runs in its own session so that stopping it also stops the app processes it
spawned; every process logs to its own file. No orphans: each one runs under `atoll/supervise.py`,
which dies with the process that started it (even by SIGKILL: `PR_SET_PDEATHSIG`) and takes
every process below it along — also those Flower detaches into a session of their own.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from atoll.pki import TlsFiles
from client.launcher.protocol import SOCKET_ENV
from common.files import toml_value
from server.coordinator_settings import ENV as COORDINATOR_CONFIG_ENV

BIN = Path(sys.executable).parent
SUPERVISOR = Path(__file__).resolve().with_name("supervise.py")
SUPEREXEC_POLL_S = 0.1


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"}
    )
    # The SuperExec (in SuperLink and SuperNodes) looks for a new app task every second by
    # default; a task then waits on that poll. 0.1 s costs a few idle wake-ups per second.
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", str(SUPEREXEC_POLL_S))
    # Flower starts helpers (flower-superexec, flwr-clientapp) by name: find ours first.
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive:
            raise RuntimeError(
                f"{proc.name} exited with code {proc.returncode}; see {proc.log_path}"
            )
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)
    # started for this one and stopped after it (a SuperNode's clientapp launcher)
    companions: list[ManagedProcess] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL; reap so nothing lingers as a zombie."""
        if self.alive:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:  # leader gone: children of its group may remain
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        for companion in self.companions:
            companion.stop(timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    env: dict[str, str],
    cwd: Path | None = None,
    user: str | None = None,
) -> ManagedProcess:
    """Start `argv` in its own session, logging to `log_path`; as `user` if given (needs root).

    It runs under the supervisor (`supervised`): when this process dies, however, it and all
    it started die too. The kernel ties that to the *thread* calling spawn: call it from the
    main thread (or one that lives as long as the process), never from a short-lived worker.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - owned by ManagedProcess
    popen = subprocess.Popen(
        supervised(argv),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        start_new_session=True,
        user=user,
        group=grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name if user else None,
        extra_groups=[] if user else None,
    )
    return ManagedProcess(name=name, popen=popen, log_path=log_path, _log=log)


def supervised(argv: Sequence[str]) -> list[str]:
    """`argv` run by `atoll/supervise.py` on behalf of this process (see its docstring)."""
    return [sys.executable, "-I", "-S", str(SUPERVISOR), str(os.getpid()), "--", *argv]


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


def write_connection(flwr_home: Path, name: str, address: str, ca_cert: Path) -> None:
    """The `flwr` CLI's connection file (never the app's pyproject: `flwr run` would rewrite it)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n'
        f'[superlink.{name}]\naddress = "{address}"\nroot-certificates = "{ca_cert}"\n'
    )


def flwr_cli(
    args: Sequence[str], flwr_home: Path, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "flwr"), *args],
        env=flower_env(flwr_home),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def register_node(flwr_home: Path, connection: str, public_key: Path, name: str) -> int:
    """Admit `public_key` under `name`; returns the node id the SuperLink assigned."""
    res = flwr_cli(
        ["supernode", "register", str(public_key), connection, "--name", name], flwr_home
    )
    found = re.search(r"SuperNode (\d+) registered", res.stdout + res.stderr)
    if res.returncode != 0 or found is None:
        raise RuntimeError(
            f"registering node '{name}' failed: {res.stdout[-500:]} {res.stderr[-500:]}"
        )
    return int(found[1])


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
            raise RuntimeError(
                f"node runtime '{name}' exited with code {proc.returncode}; see {log_path}"
            )
        if socket_path.exists():
            with socket.socket(socket.AF_UNIX) as s:
                if s.connect_ex(str(socket_path)) == 0:
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"node runtime '{name}' did not listen within {timeout:.0f} s")
        time.sleep(0.1)


def submit_run(
    *,
    app: Path | str,
    flwr_home: Path,
    connection: str,
    run_config_file: Path,
    log_path: Path,
    on_line: Callable[[str], None] | None = None,
    timeout: float = 3600,
) -> int:
    """`flwr run --stream` of an app directory or a store spec (`@atoll/atoll==x.y.z`); feeds each
    output line to `on_line`; returns the exit code."""
    argv = [
        str(BIN / "flwr"),
        "run",
        str(app),
        connection,
        "--run-config",
        str(run_config_file),
        "--stream",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.Popen(
            supervised(argv),
            env=flower_env(flwr_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=app if isinstance(app, Path) else flwr_home,
            start_new_session=True,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if on_line is not None:
                    on_line(line.rstrip("\n"))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run did not finish within {timeout:.0f} s")
            return proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
