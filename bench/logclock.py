"""Time-stamp the lines of log files as they are written (Flower's logs carry no timestamps).

A background thread polls every file of a directory every `interval` seconds and records each new
complete line with the wall-clock time it was first seen, so the resolution is about `interval`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stamped:
    t: float  # time.time() when the line was first seen
    source: str  # file stem, e.g. "superlink", "node-3"
    line: str


class LogClock:
    """Tail every `*.log` in `directory` and stamp each new line."""

    def __init__(self, directory: Path, interval: float = 0.05) -> None:
        self.directory = directory
        self.interval = interval
        self.lines: list[Stamped] = []
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="logclock", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> LogClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()  # whatever was written last

    def mark(self, source: str, line: str) -> None:
        """Record an event of our own (e.g. a line of `flwr run --stream`) with the time now."""
        with self._lock:
            self.lines.append(Stamped(time.time(), source, line))

    def snapshot(self) -> list[Stamped]:
        with self._lock:
            return sorted(self.lines, key=lambda s: s.t)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.interval)

    def _poll(self) -> None:
        if not self.directory.exists():
            return
        now = time.time()
        for path in sorted(self.directory.glob("*.log")):
            offset = self._offsets.get(path, 0)
            try:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
            except OSError:
                continue
            if not chunk:
                continue
            self._offsets[path] = offset + len(chunk)
            text = self._partial.pop(path, "") + chunk.decode("utf-8", errors="replace")
            *complete, rest = text.split("\n")
            if rest:
                self._partial[path] = rest
            with self._lock:
                self.lines += [Stamped(now, path.stem, ln) for ln in complete if ln.strip()]
