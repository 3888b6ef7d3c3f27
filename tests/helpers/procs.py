"""Processes as /proc shows them: find every process a test started, even after its parent died.

A test gives the process it starts a unique environment variable; every descendant inherits it
(Flower's processes pass their environment on), so `tagged(tag)` finds them all — also those
started after a snapshot, and those re-parented to init when their parent died.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    start: int  # start time in clock ticks since boot: (pid, start) names one process
    state: str
    cmdline: str

    @property
    def running(self) -> bool:
        return self.state != "Z"


def read(pid: int) -> Proc | None:
    """The process `pid`, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return Proc(
        pid, int(fields[19]), fields[0].decode(), raw.replace(b"\0", b" ").decode(errors="replace")
    )


def tagged(key: str, value: str) -> list[Proc]:
    """Every live (non-zombie) process whose environment holds `key=value`."""
    needle = f"{key}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in env and (proc := read(int(entry))) is not None and proc.running:
            found.append(proc)
    return found


def still_running(procs: list[Proc]) -> list[Proc]:
    """Those of `procs` that still run (same pid *and* start time, not a zombie)."""
    out = []
    for p in procs:
        now = read(p.pid)
        if now is not None and now.start == p.start and now.running:
            out.append(now)
    return out


def wait_until(predicate, timeout: float, poll: float = 0.5) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return bool(predicate())
