"""Run one command so that nothing it starts outlives the process that asked for it.

    python atoll/supervise.py PARENT_PID -- COMMAND [ARG...]

`atoll.processes.spawn` starts every long-lived process (SuperLink, SuperNode, node runtime,
proxy, app store, API, `flwr run`) through this supervisor. It

- asks the kernel to signal it when its parent dies (`PR_SET_PDEATHSIG`, SIGTERM), and exits at
  once if the parent is already gone (the race between fork and prctl);
- becomes a child subreaper (`PR_SET_CHILD_SUBREAPER`): every descendant whose parent exits is
  re-parented to it, including those that detach into a new session (the SuperLink starts
  `flower-superexec` that way) — so "every process below me" is always a walk of /proc;
- runs COMMAND (with `PR_SET_PDEATHSIG` SIGKILL, in case the supervisor itself is killed), reaps
  whatever is re-parented to it, and when COMMAND exits, or on SIGTERM/SIGINT/SIGHUP/parent
  death, SIGTERMs every descendant, waits `GRACE_S`, SIGKILLs the rest and exits with COMMAND's
  status (128 + signal if it was signalled).

Standard library only and run as a script (not `-m atoll...`): it starts in a few milliseconds
and imports nothing of the project. Linux only (prctl).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from types import FrameType

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
GRACE_S = 10.0
_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}, {value}): {os.strerror(err)}")


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """preexec_fn: the child gets `sig` when the thread that forked it exits."""
    prctl(PR_SET_PDEATHSIG, int(sig))


def descendants(root: int) -> list[int]:
    """Every live process below `root` (by /proc ppid links), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])  # fields after "(comm)"
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Supervisor:
    def __init__(self, parent: int, argv: list[str]) -> None:
        self.parent = parent
        self.argv = argv
        self.stopping = False

    def _on_signal(self, _sig: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def _reap(self) -> list[tuple[int, int]]:
        """Collect every exited child (ours and re-parented ones): [(pid, status)]."""
        done: list[tuple[int, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return done
            if pid == 0:
                return done
            done.append((pid, status))

    def _kill_all(self) -> None:
        me = os.getpid()
        for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 5.0)):
            for pid in descendants(me):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    continue
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self._reap()
                if not descendants(me):
                    return
                time.sleep(0.05)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != self.parent:  # the parent died before prctl took effect
            return 128 + signal.SIGTERM
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        child = subprocess.Popen(self.argv, preexec_fn=die_with_parent)  # noqa: PLW1509
        status: int | None = None
        while status is None and not self.stopping:
            for pid, st in self._reap():
                if pid == child.pid:
                    status = os.waitstatus_to_exitcode(st)
            if status is None and not self.stopping:
                time.sleep(0.1)
        self._kill_all()
        for pid, st in self._reap():
            if pid == child.pid:
                status = os.waitstatus_to_exitcode(st)
        if status is None:
            status = -signal.SIGTERM
        return status if status >= 0 else 128 - status


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--" or not args[0].isdigit():
        print("usage: supervise.py PARENT_PID -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    return Supervisor(int(args[0]), args[2:]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
