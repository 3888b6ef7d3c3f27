"""Concurrent writers for the group-commit audit tests (also run inside a child process)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from privacy.audit import GroupCommitWriter

THREADS, PER_THREAD = 8, 500


def hammer(
    writer: GroupCommitWriter,
    name: str,
    *,
    go: threading.Event | None = None,
    halfway: Callable[[], None] | None = None,
) -> None:
    """THREADS threads × PER_THREAD entries, each waiting for its own entry before the next.

    `halfway` runs once when every thread has written (and seen committed) half its entries,
    while all of them wait: a cross-process rendezvous there makes two processes' writes
    interleave in the log whatever the scheduler does.
    """
    failures: list[BaseException] = []
    barrier = threading.Barrier(THREADS, action=halfway)

    def one(t: int) -> None:
        if go is not None:
            go.wait()
        try:
            for i in range(PER_THREAD):
                if i == PER_THREAD // 2:
                    barrier.wait(timeout=600)
                entry = writer.append(f"apikey:{name}{t}", "api.predict", "model:m/v1", {"i": i})
                assert entry.details == {"i": i}
        except BaseException as exc:  # surfaced below
            barrier.abort()
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def rendezvous(directory: Path, me: str, other: str, timeout: float = 600) -> Callable[[], None]:
    """A halfway action: announce `me` is half done, then wait until `other` is too."""

    def meet() -> None:
        (directory / f"half-{me}").touch()
        deadline = time.monotonic() + timeout
        while not (directory / f"half-{other}").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{other} never reached half way")
            time.sleep(0.005)

    return meet
