"""The fleet proxy: nginx in front of the SuperLink, passing only the Fleet API to it.

flwr 1.41 serves the unauthenticated Control API on the same port as the Fleet API; the
SuperLink therefore binds 127.0.0.1 and nodes dial this proxy instead (config and rationale in
deploy/nginx/fleet-proxy.conf). `start_proxy` renders the config, checks it with `nginx -t` and
runs nginx in the foreground as a ManagedProcess.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from atoll.pki import TlsFiles
from atoll.processes import ManagedProcess, flower_env, spawn, wait_for_port
from common.errors import AtollError

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "fleet-proxy.conf"
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_./:\[\]-]+")  # no spaces, quotes, ';', '{', '$'


class ProxyError(AtollError, RuntimeError):
    """The proxy cannot be configured or started; the message says what to do."""


@dataclass(frozen=True)
class ProxySettings:
    listen: str  # host:port nodes dial, e.g. 0.0.0.0:9092
    upstream: str  # the SuperLink, e.g. 127.0.0.1:9093
    tls: TlsFiles
    runtime_dir: Path  # pid, logs, temp files
    upstream_name: str = "localhost"  # name checked on the SuperLink's certificate


def nginx_binary() -> str:
    path = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if Path(p).exists()), None
    )
    if path is None:
        raise ProxyError(
            "nginx is not installed: run `make system-deps` (or `apt-get install nginx-light`)"
        )
    return path


def render(settings: ProxySettings, template: Path = TEMPLATE) -> str:
    """The template with every `{{ name }}` filled; unknown or unsafe values are refused."""
    values = {
        "listen": settings.listen,
        "upstream": settings.upstream,
        "upstream_name": settings.upstream_name,
        "server_cert": str(settings.tls.server_cert),
        "server_key": str(settings.tls.server_key),
        "ca_cert": str(settings.tls.ca_cert),
        "runtime_dir": str(settings.runtime_dir),
    }
    for name, value in values.items():
        if not _SAFE_VALUE.fullmatch(value):
            raise ProxyError(
                f"proxy setting {name} contains characters nginx would misread (spaces, quotes, "
                f"';', '$' or braces); use a plain path or host:port"
            )

    def fill(m: re.Match[str]) -> str:
        if m[1] not in values:
            raise ProxyError(f"{template}: unknown placeholder '{m[1]}'")
        return values[m[1]]

    return _PLACEHOLDER.sub(fill, template.read_text())


def write_config(settings: ProxySettings) -> Path:
    settings.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = settings.runtime_dir / "fleet-proxy.conf"
    conf.write_text(render(settings))
    return conf


def _argv(conf: Path, runtime_dir: Path) -> list[str]:
    return [
        nginx_binary(),
        "-p",
        str(runtime_dir),
        "-c",
        str(conf),
        "-e",
        str(runtime_dir / "error.log"),
        "-g",
        "daemon off;",
    ]


def check_config(conf: Path, runtime_dir: Path) -> None:
    res = subprocess.run(
        [*_argv(conf, runtime_dir), "-t", "-q"], capture_output=True, text=True, timeout=30
    )
    if res.returncode != 0:
        raise ProxyError(f"nginx rejected {conf}: {res.stderr.strip()[-800:]}")


def start_proxy(settings: ProxySettings, log_path: Path) -> ManagedProcess:
    """Render, check and start nginx; returns once it accepts connections."""
    conf = write_config(settings)
    check_config(conf, settings.runtime_dir)
    proc = spawn("fleet-proxy", _argv(conf, settings.runtime_dir), log_path, flower_env())
    port = int(settings.listen.rsplit(":", 1)[1])
    wait_for_port(port, timeout=30, proc=proc)
    return proc
