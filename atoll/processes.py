"""Start, watch and stop the real Flower processes (SuperLink, SuperNodes, `flwr` CLI).

This module is the machinery every process shares (`spawn`, `ManagedProcess`, `flower_env`,
ports); what each one runs is `atoll.services` (SuperLink, app store, SuperNode, node runtime)
and `atoll.flower_cli` (the `flwr` CLI).

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
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from common.errors import AtollError

BIN = Path(sys.executable).parent
SUPERVISOR = Path(__file__).resolve().with_name("supervise.py")
SUPEREXEC_POLL_S = 0.1


class ProcessFailed(AtollError, RuntimeError):
    """A process this command started exited, or a Flower CLI call failed; the message names it
    and where its log is."""


class ProcessTimeout(AtollError, TimeoutError):
    """A process this command started did not come up in time; the message says what for."""


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
            raise ProcessFailed(
                f"{proc.name} exited with code {proc.returncode}; see {proc.log_path}"
            )
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise ProcessTimeout(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


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
