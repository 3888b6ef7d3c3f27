"""Separate hosts on one machine: Linux network namespaces on one bridge, for fault tests.

`Hosts(["coordinator", "node-1", ...])` creates, in the root namespace, one bridge and per host a
network namespace joined to it by a veth pair, each with its own 10.x address and loopback up;
nothing in the root namespace has an address on that bridge, so traffic between hosts crosses
the veth links only. Work happens on a host in two ways:

- `hosts.on(name)`: a context manager that moves the *calling thread* into the host's namespace
  (setns(2)); every socket it opens and every process it starts (fork copies the thread's
  namespaces) lives there. `LocalFederation(on_host=hosts.on)` starts the coordinator and each
  node on its host that way.
- `hosts.run(name, argv)`: `ip netns exec NS argv` for one-off commands (`ss`, `ip link`).

Names carry a prefix and the creating process id, so a later session removes what a crashed one
left (`remove_leftovers`); `close()` kills every process still inside the namespaces, then
deletes the namespaces and the bridge (the veth pairs go with them). Needs root and iproute2
(`make system-deps`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PREFIX = "atf"  # Atoll fault tests; interface names stay under Linux's 15 characters
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_OURS = re.compile(rf"^{PREFIX}(\d+)[a-z-]")
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """A namespace operation failed; the message holds the command and its error."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns: {os.strerror(err)} (root is needed)")


@dataclass(frozen=True)
class Host:
    name: str  # logical: "coordinator", "node-1"
    netns: str  # the namespace (`ip netns list`)
    address: str  # its address on the bridge
    link: str  # its end of the veth pair, inside the namespace
    peer: str  # the other end, on the bridge in the root namespace


class Hosts:
    """Namespaces `names` on one bridge, addresses 10.<subnet>.0.<1, 2, ...> in that order."""

    def __init__(self, names: Sequence[str], subnet: int = 213) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.bridge = f"{self.tag}b"
        self.hosts: dict[str, Host] = {}
        remove_leftovers()
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("link", "set", self.bridge, "up")
            for i, name in enumerate(names, start=1):
                self._add(name, i, subnet)
        except BaseException:
            self.close()
            raise

    def _add(self, name: str, i: int, subnet: int) -> None:
        host = Host(
            name=name,
            netns=f"{self.tag}-{name}",
            address=f"10.{subnet}.0.{i}",
            link=f"{self.tag}n{i}",
            peer=f"{self.tag}h{i}",
        )
        self.hosts[name] = host  # before creating anything: close() removes what exists
        ip("netns", "add", host.netns)
        ip("link", "add", host.peer, "type", "veth", "peer", "name", host.link, "netns", host.netns)
        ip("link", "set", host.peer, "master", self.bridge, "up")
        ip("-n", host.netns, "link", "set", "lo", "up")
        ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.link)
        ip("-n", host.netns, "link", "set", host.link, "up")

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    # -- working on a host ---------------------------------------------------------------
    @contextlib.contextmanager
    def on(self, name: str) -> Iterator[None]:
        """Run the body on host `name`: this thread (and what it starts) in its namespace."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(NETNS_DIR / self.hosts[name].netns, os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)

    def argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """`argv` as a command on host `name` (`ip netns exec`)."""
        return ["ip", "netns", "exec", self.hosts[name].netns, *argv]

    def run(self, name: str, argv: Sequence[str], timeout: float = 60) -> str:
        res = subprocess.run(self.argv(name, argv), capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise NetnsError(f"on {name}: {' '.join(argv)}: {res.stderr.strip()[-500:]}")
        return res.stdout

    def set_link(self, name: str, up: bool) -> None:
        """Cable in or out: the host's own end of its link, from inside its namespace."""
        host = self.hosts[name]
        self.run(name, ["ip", "link", "set", host.link, "up" if up else "down"])
        if up:  # the address stays; wait until the kernel routes through the link again
            deadline = time.monotonic() + 30
            while "state UP" not in self.run(name, ["ip", "link", "show", host.link]):
                if time.monotonic() > deadline:
                    raise NetnsError(f"{host.link} on {name} did not come back up")
                time.sleep(0.2)

    def tcp_peers(self, name: str) -> list[tuple[str, str, str]]:
        """Established TCP connections on host `name`: (local, peer, process) as `ss` shows."""
        out = self.run(name, ["ss", "-Htnp", "state", "established"])
        rows = []
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 4:
                rows.append((cols[2], cols[3], " ".join(cols[4:])))
        return rows

    def link_bytes(self, name: str) -> tuple[int, int]:
        """(rx, tx) bytes counted on the host's end of its veth link."""
        stats = Path("/sys/class/net", self.hosts[name].link, "statistics")
        out = self.run(name, ["cat", str(stats / "rx_bytes"), str(stats / "tx_bytes")])
        rx, tx = out.split()
        return int(rx), int(tx)

    def pids(self, name: str) -> list[int]:
        res = ip("netns", "pids", self.hosts[name].netns, check=False)
        return [int(p) for p in res.stdout.split()]

    # -- cleanup -------------------------------------------------------------------------
    def close(self) -> None:
        """Kill what still runs inside the namespaces, delete them and the bridge."""
        for host in self.hosts.values():
            _remove_netns(host.netns)
            _remove_link(host.peer)  # gone with its namespace, unless a socket still holds it
        self.hosts.clear()
        _remove_link(self.bridge)


def _kill_inside(netns: str) -> None:
    for _ in range(50):
        res = ip("netns", "pids", netns, check=False)
        pids = [int(p) for p in res.stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _remove_netns(netns: str) -> None:
    if not (NETNS_DIR / netns).exists():
        return
    _kill_inside(netns)
    ip("netns", "del", netns, check=False)


def _remove_link(link: str) -> None:
    if Path("/sys/class/net", link).exists():
        ip("link", "del", link, check=False)


def _dead(pid: int) -> bool:
    return pid != os.getpid() and not Path(f"/proc/{pid}").exists()


def remove_leftovers() -> list[str]:
    """Delete namespaces and links a crashed earlier session left (its process is gone), and
    our own process id's (a recycled id). Returns what was removed."""
    removed: list[str] = []
    names = [p.name for p in NETNS_DIR.iterdir()] if NETNS_DIR.is_dir() else []
    for netns in names:
        m = _OURS.match(netns)
        if m and (_dead(int(m[1])) or int(m[1]) == os.getpid()):
            _remove_netns(netns)
            removed.append(netns)
    for link in sorted(p.name for p in Path("/sys/class/net").iterdir()):
        m = _OURS.match(link)
        if m and (_dead(int(m[1])) or int(m[1]) == os.getpid()):
            _remove_link(link)
            removed.append(link)
    return removed
