"""The deployment files keep the node's two users apart (static checks, no processes)."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest
import yaml

from client.runtime.config import NodeConfig

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DATA, STATE, SOCKET_DIR = "/srv/atoll-data", "/var/lib/atoll-node", "/run/atoll"


class _Repeated(dict):
    """Keeps every value of a repeated key (systemd's `Environment=` lines), newline-joined."""

    def __setitem__(self, key: str, value: object) -> None:
        if isinstance(value, list) and key in self and isinstance(self[key], list):
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, dict_type=_Repeated)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / "systemd" / name).read_text().replace("\\\n", " "))
    return parser


def _paths(value: str) -> set[str]:
    """A systemd path list, without the '-' (ignore if missing) and '+' prefixes."""
    return {p.lstrip("-+") for p in value.split()}


@pytest.fixture(scope="module")
def runtime() -> configparser.ConfigParser:
    return _unit("atoll-node-runtime.service")


@pytest.fixture(scope="module")
def supernode() -> configparser.ConfigParser:
    return _unit("atoll-supernode.service")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose" / "node.compose.yaml").read_text())


def test_units_run_as_different_users(runtime, supernode) -> None:
    assert runtime["Service"]["User"] != supernode["Service"]["User"]
    assert runtime["Service"]["User"] == "atoll-node"
    assert supernode["Service"]["User"] == "atoll-relay"
    assert supernode["Service"]["Group"] == "atoll-relay"


def test_runtime_unit_owns_socket_dir_and_state(runtime) -> None:
    svc = runtime["Service"]
    assert svc["RuntimeDirectory"] == "atoll" and svc["RuntimeDirectoryMode"] == "0750"
    assert svc["Group"] == "atoll-relay"  # /run/atoll is traversable by the relay group
    assert svc["StateDirectory"] == "atoll-node" and svc["StateDirectoryMode"] == "0700"
    assert svc["ProtectSystem"] == "strict" and svc["NoNewPrivileges"] == "yes"
    argv = shlex.split(svc["ExecStart"])
    assert argv[1:] == ["node", "runtime", "--config", "/etc/atoll/node.toml"]


def test_supernode_unit_cannot_see_the_node(supernode) -> None:
    svc = supernode["Service"]
    hidden = _paths(svc["InaccessiblePaths"])
    assert {DATA, STATE} <= hidden
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["ProtectSystem"] == "strict" and svc["ProtectHome"] == "yes"
    writable = _paths(svc.get("ReadWritePaths", ""))
    assert not any(p.startswith((DATA, STATE, SOCKET_DIR)) for p in writable)
    unit = supernode["Unit"]
    assert "atoll-node-runtime.service" in unit["Requires"].split()
    assert "atoll-node-runtime.service" in unit["After"].split()


def test_supernode_unit_dials_only_the_runtime_socket(supernode) -> None:
    svc = supernode["Service"]
    argv = shlex.split(svc["ExecStart"])
    assert argv[argv.index("--node-config") + 1] == 'runtime="unix:/run/atoll/node.sock"'
    assert not any(DATA in a or STATE in a or "node.toml" in a for a in argv)
    env = dict(line.split("=", 1) for line in svc["Environment"].splitlines())
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["FLWR_HOME"] == "/var/lib/atoll-relay/flwr"


def _mounts(service: dict) -> list[tuple[str, str]]:
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            source, target = volume.split(":")[:2]
            out.append((source, target))
    return out


def test_compose_only_the_runtime_mounts_data_and_state(compose) -> None:
    services = compose["services"]
    assert set(services) == {"runtime", "supernode"}
    runtime, supernode = services["runtime"], services["supernode"]
    assert runtime["user"] == "atoll-node" and supernode["user"] == "atoll-relay"
    assert runtime["network_mode"] == "none"
    assert "ports" not in runtime and "ports" not in supernode

    state_volume = next(src for src, dst in _mounts(runtime) if dst == STATE)
    assert state_volume in compose["volumes"]
    assert (DATA, DATA) in _mounts(runtime)
    assert f"{DATA}:{DATA}:ro" in runtime["volumes"]
    for name, service in services.items():
        if name == "runtime":
            continue
        for src, dst in _mounts(service):
            assert DATA not in (src, dst) and dst != STATE and src != state_volume, (name, src)


def test_compose_supernode_shares_only_the_socket_volume(compose) -> None:
    runtime, supernode = compose["services"]["runtime"], compose["services"]["supernode"]
    socket_volume = next(src for src, dst in _mounts(runtime) if dst == SOCKET_DIR)
    assert (socket_volume, SOCKET_DIR) in _mounts(supernode)
    assert all(str(v).endswith(":ro") for v in supernode["volumes"])
    named = {src for src, _ in _mounts(supernode) if not src.startswith("/")}
    assert named == {socket_volume}


def test_example_node_config_validates() -> None:
    cfg = NodeConfig.load(DEPLOY / "node" / "node.example.toml")
    assert cfg.state_dir == Path(STATE)
    assert cfg.socket == Path(SOCKET_DIR) / "node.sock"
    assert cfg.socket_group == "atoll-relay"
    assert cfg.data.source.startswith(DATA + "/")
