"""The documented deployment commands, each a real process, and a node that dies mid-run.

`atoll certs create`, `atoll keys app-signing` → `atoll app-store serve`, `atoll superlink start
--app-store` → per node `atoll keys node`, `atoll node register`, `atoll budget init`, `atoll
node init`, `atoll node start --config --trusted-entities` (runtime + SuperNode) → `atoll run
--signing-key` (nodes run only the coordinator-signed
build, fetched through the app store). After node-3 has sent its first update it is killed; the
run must go on with the others, publish, and record the failure — and node-3's ledger keeps what
it spent (and holds the rest of its reservation until it expires).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from atoll.partition import partition_csv
from atoll.processes import ManagedProcess, flower_env, free_port, spawn, wait_for_port
from common.synth import write_csv
from privacy.ledger import Ledger
from server.registry import Registry

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "contracts" / "synthetic.yaml"


def atoll(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "atoll", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=flower_env(),
        cwd=ROOT,
    )
    assert res.returncode == 0, f"atoll {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res


def test_cli_deployment_survives_a_node_dying_mid_run(tmp_path: Path) -> None:
    procs: list[ManagedProcess] = []
    try:
        _run(tmp_path, procs)
    finally:
        for p in procs:
            p.stop()
    assert all(not p.alive for p in procs)


def _run(tmp: Path, procs: list[ManagedProcess]) -> None:
    certs, keys = tmp / "certs", tmp / "keys"
    atoll("certs", "create", "--out", str(certs))
    atoll("keys", "app-signing", "--out", str(tmp / "app-signing"))
    store_port = free_port()
    store = spawn(
        "app-store",
        [
            sys.executable,
            "-m",
            "atoll",
            "app-store",
            "serve",
            "--dir",
            str(tmp / "app-store"),
            "--port",
            str(store_port),
            "--certfile",
            str(certs / "server.crt"),
            "--keyfile",
            str(certs / "server.key"),
        ],
        tmp / "app-store.log",
        flower_env(),
        cwd=ROOT,
    )
    procs.append(store)
    wait_for_port(store_port, 60, store)
    port = free_port()
    superlink = spawn(
        "superlink",
        [
            sys.executable,
            "-m",
            "atoll",
            "superlink",
            "start",
            "--certs",
            str(certs),
            "--state",
            str(tmp / "state.db"),
            "--port",
            str(port),
            "--app-store",
            f"https://127.0.0.1:{store_port}",
            "--registry",  # the coordinator's own settings: never in a run config
            f"sqlite:///{tmp / 'registry.db'}",
            "--audit-key",
            str(tmp / "audit" / "coordinator.pem"),
            "--publishing-key",  # signs every registry row
            str(tmp / "publishing" / "publishing.pem"),
            "--contracts",  # runs name their contract by hash; it is staged here
            str(tmp / "contracts"),
        ],
        tmp / "superlink.log",
        flower_env(),
        cwd=ROOT,
    )
    procs.append(superlink)
    wait_for_port(port, 60, superlink)
    address, ca = f"127.0.0.1:{port}", str(certs / "ca.crt")
    data = write_csv(tmp / "all.csv", 3000, seed=5, departments=3)
    parts = partition_csv(data, "department", 3, tmp / "silos")
    nodes: dict[str, ManagedProcess] = {}
    for part in parts:
        atoll("keys", "node", part.name, "--out", str(keys))
        atoll(
            "node",
            "register",
            str(keys / f"{part.name}.pub"),
            "--name",
            part.name,
            "--superlink",
            address,
            "--ca",
            ca,
            "--flwr-home",
            str(tmp / "coord-flwr"),
            "--registry",
            f"sqlite:///{tmp / 'registry.db'}",
        )
        home = tmp / part.name
        atoll(
            "budget",
            "init",
            "--state-dir",
            str(home / "state"),
            "--node-name",
            part.name,
            "--cap",
            "10",
        )
        atoll(
            "node",
            "init",
            "--name",
            part.name,
            "--data",
            str(part.path),
            "--contract",
            str(CONTRACT),
            "--out",
            str(home / "node.toml"),
            "--state-dir",
            str(home / "state"),
            "--socket",
            str(home / "runtime.sock"),
        )
        nodes[part.name] = spawn(
            part.name,
            [
                sys.executable,
                "-m",
                "atoll",
                "node",
                "start",
                "--config",
                str(home / "node.toml"),
                "--key",
                str(keys / part.name),
                "--superlink",
                address,
                "--ca",
                ca,
                "--port",
                str(free_port()),
                "--flwr-home",
                str(home / "flwr"),
                "--trusted-entities",
                str(tmp / "app-signing" / "trusted-entities.yaml"),
            ],
            tmp / f"{part.name}.log",
            flower_env(),
            cwd=ROOT,
        )
        procs.append(nodes[part.name])

    victim = parts[2].name
    killed = threading.Event()

    def kill_after_first_update() -> None:
        deadline = time.monotonic() + 400
        db = tmp / victim / "state" / "node-privacy.db"
        while time.monotonic() < deadline and not killed.is_set():
            if db.exists() and Ledger(tmp / victim / "state").status().events >= 1:
                nodes[victim].stop(timeout=5)
                killed.set()
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=kill_after_first_update, daemon=True)
    watcher.start()
    registry = f"sqlite:///{tmp / 'registry.db'}"
    res = atoll(
        "run",
        "--contract",
        str(CONTRACT),
        "--superlink",
        address,
        "--ca",
        ca,
        "--flwr-home",
        str(tmp / "coord-flwr"),
        "--rounds",
        "3",
        "--min-nodes",
        "3",
        "--sample-rate",
        "0.05",
        "--set",
        "round-timeout=25",
        "--signing-key",
        str(tmp / "app-signing" / "app-signing"),
        "--app-store-dir",
        str(tmp / "app-store"),
        "--contracts-dir",
        str(tmp / "contracts"),
        timeout=900,
    )
    assert "signed @atoll/atoll==" in res.stdout + res.stderr
    assert '"POST /v1/hub/fetch-fab HTTP/1.1" 200' in store.log_text()
    assert "/v1/fabs/" in store.log_text()
    for part in parts[:2]:
        node_log = (tmp / f"{part.name}.log").read_text()
        assert "Receiving: train" in node_log and "verif" not in node_log.lower()
    watcher.join(5)
    assert killed.is_set(), "node-3 never recorded a release"
    assert "published synthetic-churn v1" in res.stdout + res.stderr

    with Registry(registry) as reg:
        card = reg.card("synthetic-churn")
    failures = card.run["failures_by_round"]  # a node that never replied is named, with why
    assert any(victim in by_node for by_node in failures.values()), card.run
    # whoever is named is a registered node, never an id the coordinator could not attribute
    names = {p.name for p in parts}
    assert all(set(by_node) <= names for by_node in failures.values()), card.run
    last_nodes = set(card.metrics["rounds"][-1]["nodes"])
    assert victim not in last_nodes and len(last_nodes) == 2
    spent = Ledger(tmp / victim / "state").status()
    assert spent.spent_epsilon > 0 and spent.runs[0].status == "active"  # never finished
    assert spent.reserved_epsilon > 0  # held until the reservation expires
    for survivor in (p.name for p in parts[:2]):
        assert Ledger(tmp / survivor / "state").status().runs[0].status == "closed"
