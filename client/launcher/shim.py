"""The `flwr-clientapp` that Flower's SuperExec finds first on a warm node's PATH.

The script `install.install_shim` writes runs this module under `python -I -S` (no site, no
PYTHON* variables: only the standard library is needed, and the interpreter starts in a few
milliseconds). `main` hands this process's argv, environment, cwd, umask and fds 0-2 to the
node's zygote (`zygote`), forwards SIGTERM, SIGINT and SIGHUP to the child the zygote forked, and
exits with the child's status (dying of the same signal when a signal ended the child).

Fallback: when the zygote socket is not configured, missing, not accepting, or the zygote
refuses the request, the shim execs the real `flwr-clientapp` — the first one on PATH outside
the shim's own directory — with the same argv and environment, exactly what Flower would have
started. Nothing is lost but the head start.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from client.launcher import protocol

TYPE_CHECKING = False  # `typing` costs milliseconds at every message's start: annotations only
if TYPE_CHECKING:
    from types import FrameType
    from typing import NoReturn

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
NOT_FOUND = 127  # as a shell reports a command it cannot find
PRE_ACCEPT_TIMEOUT_S = 30.0  # a zygote that does not answer by then: start cold


class _Forwarder:
    """Signal handlers: queue signals until the child exists, then send them to the zygote."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.pending: list[int] = []

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if self.sock is None:
            self.pending.append(signum)
            return
        try:  # noqa: SIM105 - contextlib is one import more for every message
            self.sock.sendall(protocol.SIGNAL + bytes([signum]))
        except OSError:
            pass  # the zygote is gone; the status (or EOF) tells the rest

    def attach(self, sock: socket.socket) -> None:
        self.sock = sock
        pending, self.pending = self.pending, []
        for signum in pending:
            self(signum, None)

    def release(self) -> None:
        """Back to default dispositions; re-raise anything that arrived in the meantime."""
        for signum in FORWARDED:
            if signum == signal.SIGINT:
                signal.signal(signum, signal.default_int_handler)
            else:
                signal.signal(signum, signal.SIG_DFL)
        for pending in self.pending:
            signal.signal(pending, signal.SIG_DFL)
            os.kill(os.getpid(), pending)


def _note(message: str) -> None:
    try:
        sys.stderr.write(f"flwr-clientapp (atoll warm launcher): {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def real_binary(shim_path: str, path: str | None = None) -> str | None:
    """The first executable `flwr-clientapp` on PATH that is not the shim (nor its directory)."""
    own = os.path.realpath(shim_path)
    own_dir = os.path.dirname(own)
    search = os.environ.get("PATH", os.defpath) if path is None else path
    for entry in search.split(os.pathsep):
        directory = entry or "."
        if os.path.realpath(directory) == own_dir:
            continue
        candidate = os.path.join(directory, protocol.SHIM_NAME)
        if (
            os.path.isfile(candidate)
            and os.access(candidate, os.X_OK)
            and os.path.realpath(candidate) != own
        ):
            return candidate
    return None


def exec_real(shim_path: str, reason: str, forwarder: _Forwarder | None = None) -> NoReturn:
    """Replace this process with the real `flwr-clientapp` (same argv and environment)."""
    if forwarder is not None:
        forwarder.release()
    target = real_binary(shim_path)
    if target is None:
        _note(f"{reason}; and no other {protocol.SHIM_NAME} on PATH: install flwr in this venv")
        os._exit(NOT_FOUND)
    _note(f"{reason}; running {target}")
    os.execv(target, [protocol.SHIM_NAME, *sys.argv[1:]])


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def _request() -> bytes:
    umask = os.umask(0)
    os.umask(umask)
    argv = [os.fsencode(a) for a in sys.argv]
    return protocol.encode_request(protocol.Request(argv, dict(os.environb), os.getcwdb(), umask))


def _die_like(status: int) -> NoReturn:
    """Exit with `status`; for -N, die of signal N as the child did (so our parent sees it)."""
    if status >= 0:
        os._exit(status & 0xFF)
    signum = -status
    if signum not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be handled anyway
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)


def main(shim_path: str) -> NoReturn:
    forwarder = _Forwarder()
    for signum in FORWARDED:
        signal.signal(signum, forwarder)
    path = os.environ.get(protocol.SOCKET_ENV, "")
    if not path:
        exec_real(shim_path, f"{protocol.SOCKET_ENV} is not set", forwarder)
    try:
        sock = _connect(path)
    except OSError as err:  # missing, refused, not ours (EACCES)
        exec_real(shim_path, f"no zygote at {path} ({err.strerror or err})", forwarder)
    try:
        sock.settimeout(PRE_ACCEPT_TIMEOUT_S)
        payload = _request()
        socket.send_fds(sock, [protocol.header(protocol.RUN, len(payload))], [0, 1, 2])
        sock.sendall(payload)
        kind, value = protocol.read_reply(sock)
        sock.settimeout(None)  # the app may run for hours
    except (OSError, EOFError, protocol.ProtocolError) as err:
        sock.close()
        exec_real(shim_path, f"zygote at {path} failed before starting the app ({err})", forwarder)
    if kind != protocol.ACCEPTED:
        sock.close()
        exec_real(shim_path, f"zygote refused: {value}", forwarder)
    pid = value
    forwarder.attach(sock)
    while True:
        try:
            kind, value = protocol.read_reply(sock)
        except (OSError, EOFError, protocol.ProtocolError) as err:
            _note(f"lost the zygote while clientapp pid {pid} ran ({err})")
            os._exit(1)
        if kind == protocol.EXITED:
            assert isinstance(value, int)
            _die_like(value)
