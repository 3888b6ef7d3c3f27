"""Factories for the warm launcher's tests: a zygote as a node runs it, and its shim's env.

`start_zygote` installs the shim under `tmp/flwr/launcher/` and starts the zygote exactly as
`atoll.clientapp_launcher.start_clientapp_launcher` does (supervised, the node's environment),
except that `entry` may name a test target instead of Flower's `flwr-clientapp`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from atoll.processes import ManagedProcess, flower_env, spawn
from client.launcher.install import (
    LauncherPaths,
    install_shim,
    launcher_paths,
    wait_ready,
    warm_env,
    zygote_argv,
)
from client.launcher.protocol import SOCKET_ENV

TESTS = Path(__file__).resolve().parents[1]
TARGET = "helpers.launcher_target:main"
FALLBACK_NOTE = "atoll warm launcher"  # what the shim writes to stderr when it falls back


@dataclass
class Zygote:
    proc: ManagedProcess
    paths: LauncherPaths
    env: dict[str, str]  # what its SuperNode would pass on: the shim first on PATH

    def log(self) -> str:
        return self.proc.log_text()

    @property
    def pid(self) -> int:
        """The zygote itself (proc.pid is its supervisor's)."""
        found = re.search(r"atoll-launcher\[(\d+)\]: ready", self.log())
        assert found, self.log()
        return int(found[1])

    def launches(self) -> list[int]:
        return [int(p) for p in re.findall(r"launched clientapp pid=(\d+)", self.log())]


def start_zygote(tmp: Path, entry: str | None = TARGET, timeout: float = 120) -> Zygote:
    home = tmp / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    env = {**flower_env(home), "PYTHONPATH": str(TESTS), "ATOLL_TEST_MARK": "zygote-env"}
    paths = launcher_paths(home)
    install_shim(paths)
    env = warm_env(env, paths)
    proc = spawn("launcher-test", zygote_argv(paths, entry=entry), tmp / "zygote.log", env)
    if not wait_ready(paths.socket, lambda: proc.alive, timeout):
        proc.stop()
        raise RuntimeError(f"the zygote did not answer:\n{proc.log_text()}")
    return Zygote(proc, paths, env)


def fake_flwr_clientapp(directory: Path) -> Path:
    """A `flwr-clientapp` that prints its pid and arguments: the fallback's exec target."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "flwr-clientapp"
    script.write_text('#!/bin/sh\necho "real $$ $*"\n')
    script.chmod(0o755)
    return script


def path_with(*dirs: Path) -> str:
    return os.pathsep.join([*(str(d) for d in dirs), os.environ.get("PATH", os.defpath)])


def without_zygote(env: dict[str, str], socket: Path) -> dict[str, str]:
    """`env` naming a socket nobody listens on."""
    return {**env, SOCKET_ENV: str(socket)}
