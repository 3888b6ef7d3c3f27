"""The zygote: one per node, Flower's clientapp entry point imported once, a fork per message.

    python -P -m client.launcher.zygote --socket DIR/zygote.sock [--entry flwr-clientapp]

Started by `atoll.services` beside the node's SuperNode, as the same OS user, with the same
environment and under the same supervision (it dies with whoever started it; so do its
children: each asks for SIGKILL when the zygote dies). Start-up:

1. `sys.path[0]` becomes the directory of the venv's real `flwr-clientapp` script (what that
   script's interpreter has; `-P` keeps the cwd out), BLAS/OpenMP pools are limited to one thread
   for the imports, and the console-script entry point is loaded from the installed
   distribution's metadata — the very function the real script calls. That import brings in
   flwr, grpc, protobuf, httpx, numpy; never the app. The launcher's own `client.launcher`
   modules are then dropped from `sys.modules`, so the app's `client` package can only come from
   the FAB (see `child`).
2. While importing, it records which environment variables the imports read
   (`environment`): a request is served only if those (and the ones the interpreter, loader and
   C libraries read on their own) match; otherwise it is refused and the shim execs the real
   binary. The child gets the request's environment.
3. It listens on a Unix socket in a private directory (0700, owned by this uid; socket 0600).

Serving is single-threaded (selectors + a signal wakeup fd): no threads and no gRPC channel ever
exist in the zygote, which is checked before every fork. Per RUN request it checks the peer's
uid (SO_PEERCRED), forks, and relays: signals from the shim to the child, the child's status to
the shim; if the shim's connection closes first, the child is SIGKILLed. Each launch and exit is
one log line (`launched clientapp pid=... n=...`, `clientapp pid=... exited status=...`). On
SIGTERM/SIGINT/SIGHUP it stops accepting, SIGTERMs its children, waits `STOP_GRACE_S`, kills the
rest and removes its socket.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import FrameType

from client.launcher import child, install, protocol
from client.launcher.environment import ImportEnvironment, recording

ONE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
REQUEST_TIMEOUT_S = 10.0
STOP_GRACE_S = 10.0
STOPPERS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
HANDLED = (*STOPPERS, signal.SIGCHLD)
Entry = Callable[[], object]


def log(message: str) -> None:
    print(f"atoll-launcher[{os.getpid()}]: {message}", flush=True)


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def entry_script(entry: str) -> Path:
    """The venv's script whose interpreter we stand in for (the real `flwr-clientapp`)."""
    return Path(sys.executable).parent / (protocol.SHIM_NAME if ":" in entry else entry)


def load_entry(entry: str) -> Entry:
    """A console script's entry point from the installed metadata, or `module:function`."""
    if ":" in entry:
        module, _, attr = entry.partition(":")
        loaded: Entry = getattr(importlib.import_module(module), attr)
        return loaded
    found = entry_points(group="console_scripts", name=entry)
    if not found:
        raise SystemExit(f"no console script '{entry}' installed: is flwr in this venv?")
    loaded = next(iter(found)).load()
    return loaded


def private_directory(directory: Path) -> None:
    """`directory` must be ours alone: a real directory, this uid's, mode 0700 (made if missing)."""
    directory.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise SystemExit(
            f"{directory} must be a directory owned by uid {os.getuid()} with mode 0700 (found "
            f"uid {st.st_uid}, mode {stat.filemode(st.st_mode)}): remove it or fix it"
        )


def private_socket(path: Path) -> socket.socket:
    """Listen on `path` (0600) in a private directory."""
    private_directory(path.parent)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise SystemExit(f"{path} exists and is not a socket: remove it")
        if protocol.ping(path, timeout=1.0):
            raise SystemExit(f"another zygote already serves {path}")
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    listener.listen(64)
    listener.setblocking(False)
    return listener


@dataclass
class Launch:
    pid: int
    conn: socket.socket | None
    pending: bytes = b""


class Zygote:
    """The serving loop; `serve` returns when asked to stop (children stopped, socket gone)."""

    def __init__(
        self,
        socket_path: Path,
        entry: Entry,
        script: str,
        environment: ImportEnvironment,
        dispositions: dict[int, child.Disposition],
    ) -> None:
        self.socket_path = socket_path
        self.entry = entry
        self.script = script
        self.environment = environment
        self.dispositions = dispositions
        self.launches: dict[int, Launch] = {}
        self.served = 0
        self.stopping = False
        self.listener = private_socket(socket_path)
        self.inode = os.stat(socket_path).st_ino
        self.wake_r, self.wake_w = socket.socketpair()
        for end in (self.wake_r, self.wake_w):
            end.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED:
            signal.signal(signum, self._on_signal)
        log(f"ready on {self.socket_path}")
        try:
            while not self.stopping:
                self._step(1.0)
        finally:
            self._shut_down()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum in STOPPERS:
            self.stopping = True

    def _step(self, timeout: float) -> None:
        for key, _events in self.selector.select(timeout):
            if key.data == "listener":
                self._accept()
            elif key.data == "wake":
                try:
                    while self.wake_r.recv(512):
                        pass
                except BlockingIOError:
                    pass
            else:
                self._from_shim(int(key.data))
        self._reap()

    # -- requests ---------------------------------------------------------------------------
    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.settimeout(REQUEST_TIMEOUT_S)
        fds: list[int] = []
        try:
            data, fds, _flags, _addr = socket.recv_fds(conn, protocol.HEADER_SIZE, 3)
            self._handle(conn, data, fds)
        except (OSError, EOFError, protocol.ProtocolError) as err:
            log(f"dropped a request: {err}")
            conn.close()
        finally:
            for fd in fds:  # the child has its own copies
                os.close(fd)

    def _handle(self, conn: socket.socket, data: bytes, fds: list[int]) -> None:
        if len(data) < protocol.HEADER_SIZE:
            data += protocol.recv_exact(conn, protocol.HEADER_SIZE - len(data))
        magic, length = protocol.parse_header(data)
        if magic == protocol.PING:
            conn.sendall(protocol.PONG)
            conn.close()
            return
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        request = protocol.decode_request(protocol.recv_exact(conn, length))
        reason = self._refusal(uid, fds, request)
        if reason:
            log(f"refused a request: {reason}")
            conn.sendall(protocol.refused(reason))
            conn.close()
            return
        self._launch(conn, fds, request)

    def _refusal(self, uid: int, fds: list[int], request: protocol.Request) -> str:
        if uid != os.getuid():
            return f"peer uid {uid} is not this node's uid {os.getuid()}"
        if len(fds) != 3:
            return f"expected fds 0, 1 and 2, got {len(fds)} descriptors"
        if self.stopping:
            return "the zygote is stopping"
        threads = os_threads()
        if threads != 1 or threading.active_count() != 1:
            return f"the zygote runs {threads} threads: forking it would not be safe"
        differ = self.environment.mismatches(request.env)
        if differ:
            return f"environment differs from the zygote's imports in {', '.join(differ[:10])}"
        request.env = self.environment.for_child(request.env)
        return ""

    def _launch(self, conn: socket.socket, fds: list[int], request: protocol.Request) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._leave_in_child(conn)
            child.run(request, fds, self.script, self.entry, me, self.dispositions)
        self.served += 1
        self.launches[pid] = Launch(pid, conn)
        log(f"launched clientapp pid={pid} n={self.served}")
        try:
            conn.sendall(protocol.accepted(pid))
        except OSError:
            self._shim_gone(self.launches[pid])
            return
        self.selector.register(conn, selectors.EVENT_READ, pid)

    def _leave_in_child(self, conn: socket.socket) -> None:
        """In a new child: close every descriptor of the zygote's (listener, wakeup, shims)."""
        signal.set_wakeup_fd(-1)
        self.selector.close()
        for sock in (self.listener, self.wake_r, self.wake_w, conn):
            sock.close()
        for launch in self.launches.values():
            if launch.conn is not None:
                launch.conn.close()

    # -- running children -------------------------------------------------------------------
    def _from_shim(self, pid: int) -> None:
        launch = self.launches.get(pid)
        if launch is None or launch.conn is None:
            return
        try:
            data = launch.conn.recv(64)
        except OSError:
            data = b""
        if not data:
            self._shim_gone(launch)
            return
        launch.pending += data
        while len(launch.pending) >= 2:
            kind, signum = launch.pending[:1], launch.pending[1]
            launch.pending = launch.pending[2:]
            if kind == protocol.SIGNAL and signum in STOPPERS:
                self._kill(pid, signal.Signals(signum))

    def _shim_gone(self, launch: Launch) -> None:
        log(f"shim of clientapp pid={launch.pid} is gone: killing it")
        self._close(launch)
        self._kill(launch.pid, signal.SIGKILL)

    def _kill(self, pid: int, signum: signal.Signals) -> None:
        if pid in self.launches:  # not reaped yet: the pid is still this child's
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _close(self, launch: Launch) -> None:
        if launch.conn is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(launch.conn)
            launch.conn.close()
            launch.conn = None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            launch = self.launches.pop(pid, None)
            log(f"clientapp pid={pid} exited status={code}")
            if launch is not None and launch.conn is not None:
                with contextlib.suppress(OSError):
                    launch.conn.sendall(protocol.exited(code))
                self._close(launch)

    def _shut_down(self) -> None:
        self.selector.unregister(self.listener)
        self.listener.close()
        try:
            if os.stat(self.socket_path).st_ino == self.inode:
                self.socket_path.unlink()
        except OSError:
            pass
        for pid in list(self.launches):
            self._kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while self.launches and time.monotonic() < deadline:
            self._step(0.1)
        for pid in list(self.launches):
            self._kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_GRACE_S
        while self.launches and time.monotonic() < deadline:
            self._step(0.1)
        log(f"stopped after {self.served} launches")


def prepare(entry_name: str) -> tuple[Entry, str, ImportEnvironment]:
    """Import the entry point as its script's interpreter would: (entry, script, environment)."""
    script = entry_script(entry_name)
    if not script.is_file():
        raise SystemExit(f"{script} not found: the zygote stands in for that script")
    sys.path.insert(0, os.path.dirname(os.path.realpath(script)))  # what the script's sys.path has
    before = dict(os.environb)
    with recording() as reads:
        for name in ONE_THREAD:
            os.environ[name] = "1"  # no BLAS/OpenMP worker threads: this process forks
        entry = load_entry(entry_name)
    after = dict(os.environb)
    for name in ONE_THREAD:  # ours, not the imports': as they were
        raw = os.fsencode(name)
        after.pop(raw, None)
        if raw in before:
            after[raw] = before[raw]
    read = frozenset(map(os.fsencode, reads.read))
    return entry, str(script), ImportEnvironment(before, after, read, reads.everything)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Warm launcher for flwr-clientapp (one per node)")
    parser.add_argument("--socket", required=True, type=Path, help="where to listen (dir: 0700)")
    parser.add_argument(
        "--entry",
        default="flwr-clientapp",
        help="console script of this venv (default) or module:function (tests)",
    )
    parser.add_argument(
        "--remove-directory",
        action="store_true",
        help="on exit, remove the socket's directory and the shim in it (a $TMPDIR fallback)",
    )
    args = parser.parse_args(argv)
    socket_path = args.socket.absolute()
    private_directory(socket_path.parent)  # before a second of imports: fail fast
    t0 = time.monotonic()
    entry, script, environment = prepare(args.entry)
    dropped = child.drop_own_modules()
    gc.collect()
    gc.freeze()  # preloaded objects stay out of the children's collections (fewer copied pages)
    if os_threads() != 1:
        log(f"warning: {os_threads()} threads after the imports: every request will be refused")
    log(
        f"imported {args.entry} in {time.monotonic() - t0:.2f} s ({len(sys.modules)} modules, "
        f"{len(environment.read)} variables read; launcher modules dropped: "
        f"{', '.join(sorted(dropped))})"
    )
    zygote = Zygote(
        socket_path=socket_path,
        entry=entry,
        script=script,
        environment=environment,
        dispositions={s: signal.getsignal(s) for s in HANDLED},
    )
    zygote.serve()
    if args.remove_directory:
        install.remove(install.LauncherPaths(socket_path.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
