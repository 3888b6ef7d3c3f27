"""A stand-in for Flower's clientapp entry point, for the warm launcher's tests.

The zygote loads it with `--entry helpers.launcher_target:main` (PYTHONPATH = tests/); the
child calls `main()` with the shim's argv, exactly as it would call `flwr_clientapp()`.

    report            print the child's view of itself as JSON (argv, cwd, env, pids, modules)
    exit N            write a line to stdout and one to stderr, return N
    die               die of SIGKILL
    wait-for-term     print the pid, wait; on SIGTERM print "got SIGTERM" and exit 7
    sleep             print the pid, sleep 10 minutes
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from types import FrameType

APP_PACKAGES = ("client", "common")
# read at import, as Flower reads FLWR_LOG_LEVEL: a request must bring the value the zygote saw
MODE = os.environ.get("ATOLL_TARGET_MODE", "")


def _report() -> int:
    print(
        json.dumps(
            {
                "argv": sys.argv,
                "cwd": os.getcwd(),
                "env": dict(os.environ),
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "umask": _umask(),
                "path0": sys.path[0],
                "app_modules": sorted(m for m in sys.modules if m.split(".")[0] in APP_PACKAGES),
                "threads": threading.active_count(),
                "fds": _open_fds(),
            }
        )
    )
    return 0


def _open_fds() -> dict[str, str]:
    """Descriptors open in this process: what each is (the listing's own fd is closed by then)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[name] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _on_term(signum: int, _frame: FrameType | None) -> None:
    print(f"got {signal.Signals(signum).name}", flush=True)
    sys.exit(7)


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "report":
        return _report()
    if command == "exit":
        print("to stdout", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        return int(sys.argv[2])
    if command == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if command == "wait-for-term":
        signal.signal(signal.SIGTERM, _on_term)
        print(os.getpid(), flush=True)
        while True:
            signal.pause()
    if command == "sleep":
        print(os.getpid(), flush=True)
        time.sleep(600)
        return 0
    print(f"unknown command {command!r}", file=sys.stderr)
    return 2
