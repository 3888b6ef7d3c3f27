"""Set a node up for the warm launcher: where its files go, the shim script, the zygote's argv
and the SuperNode's environment (`atoll.services` starts the processes).

Layout, private to the node's OS user: `FLWR_HOME/launcher/` (0700) holds `bin/flwr-clientapp`
(the shim) and `zygote.sock` (0600, made by the zygote). A Unix socket path has at most 107
bytes; when FLWR_HOME is too deep for that, the directory is `$TMPDIR/atoll-launcher-<hash of
FLWR_HOME>` instead (the zygote refuses to listen in a directory that is not its own with mode
0700, so a squatter there only costs the warm start, never the node's safety).

Only the SuperNode's environment gets the shim's directory in front of its PATH (and the socket
in `protocol.SOCKET_ENV`): nothing else on the machine starts the shim.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from client.launcher import protocol

DIRECTORY = "launcher"
SOCKET = "zygote.sock"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes with the NUL; keep a margin
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding `client/`


@dataclass(frozen=True)
class LauncherPaths:
    directory: Path
    temporary: bool = False  # under $TMPDIR (FLWR_HOME too deep): removed when the zygote stops

    @property
    def socket(self) -> Path:
        return self.directory / SOCKET

    @property
    def bin_dir(self) -> Path:
        return self.directory / "bin"

    @property
    def shim(self) -> Path:
        return self.bin_dir / protocol.SHIM_NAME


def launcher_paths(flwr_home: Path) -> LauncherPaths:
    """Where a node's launcher lives (deterministic: the same FLWR_HOME, the same paths)."""
    home = flwr_home.absolute()
    paths = LauncherPaths(home / DIRECTORY)
    if len(os.fsencode(paths.socket)) <= MAX_SOCKET_PATH:
        return paths
    digest = hashlib.sha256(os.fsencode(home)).hexdigest()[:16]
    return LauncherPaths(Path(tempfile.gettempdir()) / f"atoll-launcher-{digest}", temporary=True)


def shim_script(python: str = sys.executable, package_root: Path = PACKAGE_ROOT) -> str:
    """The shim executable: this venv's interpreter, isolated and without site (stdlib only)."""
    return (
        f"#!{python} -IS\n"
        "# Atoll's warm launcher (client/launcher/shim.py): hands this launch to the node's\n"
        "# zygote, or execs the real flwr-clientapp. Written by client/launcher/install.py.\n"
        "import sys\n"
        f"sys.path.insert(0, {str(package_root)!r})\n"
        "from client.launcher.shim import main\n"
        "main(__file__)\n"
    )


def remove(paths: LauncherPaths) -> None:
    """Remove the shim and its (then empty) directories; leave anything else alone."""
    for path in (paths.shim, paths.bin_dir, paths.directory):
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() else path.unlink()


def install_shim(paths: LauncherPaths, owner: int | None = None) -> Path:
    """Create the private directory (0700) and write the shim into its bin/; return the shim.

    An existing directory must be a real directory (no symlink) owned by this user or by
    `owner` (the node's user, who gets it after a first start): a directory anyone else made —
    say in /tmp — is refused, since whoever owns it could swap the shim."""
    paths.directory.parent.mkdir(parents=True, exist_ok=True)
    for directory in (paths.directory, paths.bin_dir):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (os.getuid(), owner):
            raise PermissionError(
                f"{directory} is not a directory of this user's (uid {st.st_uid}, mode "
                f"{stat.filemode(st.st_mode)}): remove it, or start the node as its owner"
            )
        os.chmod(directory, 0o700)
    text = shim_script()
    if not paths.shim.is_file() or paths.shim.read_text() != text:
        tmp = paths.shim.with_name(f".{protocol.SHIM_NAME}.{os.getpid()}")
        tmp.write_text(text)
        os.chmod(tmp, 0o700)
        os.replace(tmp, paths.shim)
    return paths.shim


def warm_env(env: dict[str, str], paths: LauncherPaths) -> dict[str, str]:
    """`env` with the shim first on PATH and the zygote's socket named (a new dict)."""
    out = dict(env)
    out["PATH"] = os.pathsep.join([str(paths.bin_dir), env.get("PATH", os.defpath)])
    out[protocol.SOCKET_ENV] = str(paths.socket)
    return out


def zygote_argv(
    paths: LauncherPaths, python: str = sys.executable, entry: str | None = None
) -> list[str]:
    """The zygote's command (`-P`: the cwd never lands on its sys.path)."""
    argv = [python, "-P", "-m", "client.launcher.zygote", "--socket", str(paths.socket)]
    argv += ["--remove-directory"] if paths.temporary else []
    return [*argv, "--entry", entry] if entry else argv


def wait_ready(socket_path: str | Path, alive: Callable[[], bool], timeout: float) -> bool:
    """Whether the zygote answers on `socket_path` within `timeout` s (while `alive()`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        if protocol.ping(socket_path):
            return True
        time.sleep(0.1)
    return False
