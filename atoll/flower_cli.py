"""The `flwr` CLI: its connection file, `flwr supernode register` and `flwr run --stream`.

Each call runs Flower's own `flwr` with this project's environment (`atoll.processes.flower_env`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from atoll.processes import BIN, ProcessFailed, flower_env, supervised


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
        raise ProcessFailed(
            f"registering node '{name}' failed: {res.stdout[-500:]} {res.stderr[-500:]}"
        )
    return int(found[1])


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
