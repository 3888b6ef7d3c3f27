"""A SuperNode's warm clientapp launcher (client/launcher) as a managed process of this host.

`start_supernode` (atoll.services) starts it beside the SuperNode when `warm_clientapp` is on:
the shim installed in the node's Flower home, the zygote spawned with the SuperNode's own user
and environment, and the environment the SuperNode must get (the shim first on its PATH).
"""

from __future__ import annotations

import logging
import os
import pwd
from pathlib import Path

from atoll.processes import ManagedProcess, spawn
from client.launcher import install as launcher

log = logging.getLogger(__name__)


def start_clientapp_launcher(
    name: str,
    flwr_home: Path,
    env: dict[str, str],
    log_path: Path,
    cwd: Path | None = None,
    user: str | None = None,
) -> tuple[ManagedProcess, dict[str, str]]:
    """Install the shim and start the node's zygote (client/launcher) with `env`, as `user`;
    returns it and the environment its SuperNode must get (the shim first on PATH)."""
    uid = pwd.getpwnam(user).pw_uid if user is not None else None
    paths = launcher.launcher_paths(flwr_home)
    launcher.install_shim(paths, owner=uid)
    env = launcher.warm_env(env, paths)
    if uid is not None:
        for path in (paths.directory, paths.bin_dir, paths.shim):
            os.chown(path, uid, -1)
    argv = launcher.zygote_argv(paths)
    return spawn(f"launcher-{name}", argv, log_path, env, cwd=cwd, user=user), env


def wait_for_launcher(proc: ManagedProcess, socket_path: str, timeout: float = 60.0) -> bool:
    """Wait until the zygote answers; if it does not, say so and go on: every launch then
    falls back to the real `flwr-clientapp` (slower, never wrong)."""
    if launcher.wait_ready(socket_path, lambda: proc.alive, timeout):
        return True
    state = f"exited with code {proc.returncode}" if not proc.alive else "is not answering"
    log.warning("%s %s (see %s): cold flwr-clientapp launches", proc.name, state, proc.log_path)
    return False
