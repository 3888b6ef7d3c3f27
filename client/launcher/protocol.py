"""The warm launcher's wire format on its Unix socket (standard library only: the shim imports it).

A client opens a stream connection and sends a header, `MAGIC + length` (8 bytes):

- `PING` (length 0): the zygote answers `PONG` and closes (readiness probes, from any peer).
- `RUN`: the header goes in one `sendmsg` with SCM_RIGHTS carrying the client's fds 0, 1 and 2,
  then `length` bytes of payload: NUL-separated fields `cwd, umask (octal), argc, argv..., env
  KEY=VALUE...` (none of these can contain NUL on POSIX; all bytes, as the OS holds them).

The zygote answers `ACCEPTED + pid` (4 bytes) or `REFUSED + length (2) + reason (UTF-8)`; after
ACCEPTED the client may send `SIGNAL + signum` (1 byte) any number of times, and the zygote ends
with `EXITED + status` (4 bytes, signed: an exit code, or -N when signal N ended the child).
Closing the connection before EXITED means "the client is gone": the zygote kills the child.
"""

from __future__ import annotations

import os
import socket

SOCKET_ENV = "ATOLL_CLIENTAPP_ZYGOTE"  # the zygote's socket path, in the SuperNode's environment
SHIM_NAME = "flwr-clientapp"  # the command Flower's SuperExec starts by name

RUN = b"AWL1"
PING = b"AWP1"
HEADER_SIZE = 8
MAX_PAYLOAD = 4 * 1024 * 1024

PONG = b"P"
ACCEPTED = b"A"
REFUSED = b"R"
EXITED = b"X"
SIGNAL = b"S"


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow."""


class Request:
    """One RUN request, as the OS holds its parts (bytes)."""

    __slots__ = ("argv", "cwd", "env", "umask")

    def __init__(self, argv: list[bytes], env: dict[bytes, bytes], cwd: bytes, umask: int) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.umask = umask


def header(magic: bytes, length: int) -> bytes:
    return magic + length.to_bytes(4, "big")


def parse_header(data: bytes) -> tuple[bytes, int]:
    if len(data) != HEADER_SIZE or data[:4] not in (RUN, PING):
        raise ProtocolError("not a warm-launcher header")
    length = int.from_bytes(data[4:], "big")
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"request of {length} bytes exceeds {MAX_PAYLOAD}")
    return data[:4], length


def encode_request(request: Request) -> bytes:
    fields = [request.cwd, b"%o" % request.umask, b"%d" % len(request.argv), *request.argv]
    fields += [k + b"=" + v for k, v in request.env.items()]
    for field in fields:
        if b"\0" in field:
            raise ProtocolError("argv, environment and cwd cannot contain NUL bytes")
    return b"\0".join(fields)


def decode_request(payload: bytes) -> Request:
    fields = payload.split(b"\0")
    try:
        cwd, umask, argc = fields[0], int(fields[1], 8), int(fields[2])
    except (IndexError, ValueError) as err:
        raise ProtocolError(f"malformed request: {err}") from None
    if argc < 1 or len(fields) < 3 + argc or not cwd:
        raise ProtocolError("malformed request: argv or cwd missing")
    env: dict[bytes, bytes] = {}
    for item in fields[3 + argc :]:
        key, eq, value = item.partition(b"=")
        if not key or not eq:
            raise ProtocolError("malformed request: environment entry without KEY=")
        env[key] = value
    return Request(fields[3 : 3 + argc], env, cwd, umask)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly `n` bytes, or EOFError if the peer closes first."""
    chunks = []
    while n > 0:
        chunk = sock.recv(n)
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def accepted(pid: int) -> bytes:
    return ACCEPTED + pid.to_bytes(4, "big")


def refused(reason: str) -> bytes:
    text = reason.encode("utf-8", "replace")[:4000]
    return REFUSED + len(text).to_bytes(2, "big") + text


def exited(status: int) -> bytes:
    return EXITED + status.to_bytes(4, "big", signed=True)


def read_reply(sock: socket.socket) -> tuple[bytes, int | str]:
    """(ACCEPTED, pid), (REFUSED, reason), (EXITED, status) or (PONG, 0); EOFError when closed."""
    kind = recv_exact(sock, 1)
    if kind == PONG:
        return kind, 0
    if kind in (ACCEPTED, EXITED):
        return kind, int.from_bytes(recv_exact(sock, 4), "big", signed=kind == EXITED)
    if kind == REFUSED:
        length = int.from_bytes(recv_exact(sock, 2), "big")
        return kind, recv_exact(sock, length).decode("utf-8", "replace")
    raise ProtocolError(f"unexpected reply {kind!r}")


def ping(path: str | os.PathLike[str], timeout: float = 2.0) -> bool:
    """Whether a zygote answers on `path` (any peer may ping; only its own uid may RUN)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(os.fspath(path))
            sock.sendall(header(PING, 0))
            return read_reply(sock)[0] == PONG
    except (OSError, EOFError, ProtocolError):
        return False
