"""What a zygote's forked child does: become the process Flower would have started, run
Flower's entry point unchanged, exit with its status.

The child takes over the shim's stdin/stdout/stderr (dup2 onto fds 0-2, so the zygote's Python
stream objects now write where the shim's did), its umask, cwd, environment and argv (argv[0] is
the real `flwr-clientapp` script, as in a fresh process), restores the signal dispositions a
fresh interpreter has, asks the kernel to SIGKILL it if the zygote dies, reseeds numpy's global
generator (Python's `random` reseeds itself after fork) and drops any module of the launcher's
own package (`client.*`) from `sys.modules`, so the app is imported from the FAB Flower installs
and nowhere else. Then it calls the entry point the real script calls — `sys.exit(entry())` —
and ends like an interpreter does: SystemExit's code (None -> 0, text -> printed, 1), an
uncaught exception's traceback (1), KeyboardInterrupt by dying of SIGINT; atexit functions run,
streams are flushed, then `os._exit`. (Unlike a normal interpreter exit it does not join
non-daemon threads: Flower's clientapp starts only daemon threads.)

Differences from a fresh process, all deliberate and harmless to what runs: the modules the
zygote imported are shared copy-on-write; the str hash seed is the zygote's; BLAS/OpenMP pools
were sized to one thread before numpy loaded (a zygote must not fork with threads running).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import sys
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn

from client.launcher.protocol import Request

PR_SET_PDEATHSIG = 1
OWN_PACKAGE = __name__.split(".")[0]  # "client": the app's own top-level package
_libc = ctypes.CDLL(None, use_errno=True)
# what signal.getsignal returns (and signal.signal accepts)
Disposition = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def drop_own_modules() -> list[str]:
    """Remove this package's modules (`client`, `client.*`) from `sys.modules`; return them."""
    names = [m for m in sys.modules if m == OWN_PACKAGE or m.startswith(OWN_PACKAGE + ".")]
    for name in names:
        del sys.modules[name]
    return names


def exit_code(code: object) -> int:
    """What the interpreter makes of `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def become(
    request: Request,
    fds: list[int],
    script: str,
    zygote_pid: int,
    dispositions: dict[int, Disposition],
) -> None:
    """Turn this freshly forked process into the one the shim stands for."""
    for signum, handler in dispositions.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    _libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != zygote_pid:  # the zygote died before prctl took effect
        os._exit(1)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    os.umask(request.umask)
    os.environb.clear()
    os.environb.update(request.env)
    os.chdir(request.cwd)
    sys.argv = [script, *(os.fsdecode(a) for a in request.argv[1:])]
    numpy_random = sys.modules.get("numpy.random")
    reseed = getattr(numpy_random, "seed", None)
    if callable(reseed):
        reseed()  # fresh OS entropy, as a fresh import would have drawn
    drop_own_modules()


def run(
    request: Request,
    fds: list[int],
    script: str,
    entry: Callable[[], object],
    zygote_pid: int,
    dispositions: dict[int, Disposition],
) -> NoReturn:
    """The child's whole life: never returns, never unwinds into the zygote's code."""
    code = 1
    try:
        try:
            become(request, fds, script, zygote_pid, dispositions)
        except OSError as err:
            print(f"flwr-clientapp (atoll warm launcher): cannot start: {err}", file=sys.stderr)
            os._exit(1)
        try:
            code = exit_code(entry())  # the real script: sys.exit(flwr_clientapp())
        except SystemExit as stop:
            code = exit_code(stop.code)
        except KeyboardInterrupt:
            traceback.print_exc()
            _finish()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught error
            sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
            code = 1
        _finish()
    finally:
        os._exit(code & 0xFF)


def _finish() -> None:
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
