"""Which environments a zygote may serve: those under which its imports would have gone the same.

A fresh `flwr-clientapp` imports Flower under its SuperNode's environment; the zygote imported
Flower once, under the environment it was started with. Its SuperNode's environment is not
identical — Flower's SuperNode sets variables in its own process (GRPC_VERBOSITY,
BROWSER_USE_SETUP_LOGGING, ...) after both were started from the same one — so equality would
refuse every request. What import-time code can depend on is what it reads:

- while the zygote imports Flower, `os.environ` is a recording view of the real environment
  (`recording`: every key looked up is noted; iterating or copying it marks *every* key as
  read); Flower's code is not touched, only the mapping it reads through, and only then;
- the interpreter, the dynamic loader and C libraries read some variables without
  `os.environ` (PYTHON*, LD_*, locale, TZ, MALLOC_*, BLAS/OpenMP threads): those always count.

A request is served only if every variable that counts has the value the zygote's imports saw
(or, absent then, the value those imports themselves set — so they would have left it alone).
The child then gets the request's environment plus whatever the imports set and it lacks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass

# read by the interpreter at start-up, the dynamic loader, libc or C libraries at load time
OUTSIDE_OS_ENVIRON = (
    b"PYTHON", b"_PYTHON", b"LD_", b"LC_", b"LANG", b"TZ", b"MALLOC_",
    b"OPENBLAS_", b"GOTO", b"OMP_", b"MKL_",
)  # fmt: skip


class ReadRecorder(MutableMapping[str, str]):
    """`os.environ` as the imports see it: the real mapping, with every looked-up key noted."""

    def __init__(self, real: MutableMapping[str, str]) -> None:
        self.real = real
        self.read: set[str] = set()
        self.everything = False

    def __getitem__(self, key: str) -> str:  # also serves get(), `in`, os.getenv()
        self.read.add(key)
        return self.real[key]

    def __setitem__(self, key: str, value: str) -> None:
        self.real[key] = value

    def __delitem__(self, key: str) -> None:
        del self.real[key]

    def __iter__(self) -> Iterator[str]:
        self.everything = True
        return iter(self.real)

    def __len__(self) -> int:
        return len(self.real)

    def copy(self) -> dict[str, str]:
        self.everything = True
        return dict(self.real)


@contextmanager
def recording() -> Iterator[ReadRecorder]:
    """Within: `os.environ` (and so `os.getenv`) goes through a ReadRecorder."""
    real = os.environ
    recorder = ReadRecorder(real)
    os.environ = recorder  # type: ignore[assignment]  # noqa: B003 - a view, not a new env
    try:
        yield recorder
    finally:
        os.environ = real  # noqa: B003 - the very same object as before


@dataclass(frozen=True)
class ImportEnvironment:
    before: dict[bytes, bytes]  # the environment the imports started under
    after: dict[bytes, bytes]  # ... and the one they left (what they set in it)
    read: frozenset[bytes]  # what they looked up through os.environ
    everything: bool = False  # they iterated or copied it: every variable counts

    def counts(self, key: bytes) -> bool:
        return self.everything or key in self.read or key.startswith(OUTSIDE_OS_ENVIRON)

    def mismatches(self, env: Mapping[bytes, bytes]) -> list[str]:
        """Names of the variables that count and differ (empty: the request may be served)."""
        out = []
        for key in sorted(self.before.keys() | self.after.keys() | env.keys()):
            if not self.counts(key):
                continue
            seen, now = self.before.get(key), env.get(key)
            if now == seen or (seen is None and now == self.after.get(key)):
                continue
            out.append(os.fsdecode(key))
        return out

    def for_child(self, env: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
        """`env` as the imports would have left it (what they set and it lacks, added)."""
        out = dict(env)
        for key, value in self.after.items():
            if self.before.get(key) != value and key not in out:
                out[key] = value
        return out
