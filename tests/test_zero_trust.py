"""Zero trust on real processes: only the Fleet API is reachable from nodes, only signed apps run on
nodes that demand signatures, and nothing crosses loopback in plaintext.

One federation on loopback: a TLS SuperLink with node authentication bound to 127.0.0.1, the nginx
fleet proxy in front of it (deploy/nginx/fleet-proxy.conf), three SuperNodes that dial the proxy,
each started with `--trusted-entities`. The first two trust the coordinator's app-signing key and
run the signed build the SuperLink fetched from Atoll's app store; the third trusts another key and
must refuse that build (a wrongly signed app). A second submission, the unsigned app straight from
a local directory, must be refused by every node. tcpdump records the proxy's, the SuperLink's and
the app store's ports for the signed run; one node's data carries a planted canary. One-round runs
on small synthetic data keep this about two minutes.

Needs root, nginx and tcpdump (`make system-deps`); without them the tests fail and say so.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import sqlite3
import ssl
import struct
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import torch
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.app import ArrayRecord
from flwr.supercore.fab import Fab
from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign, sign_message
from flwr.supernode.start_client_internal import _verify_fab

from atoll.federation import LocalFederation
from atoll.flower_cli import flwr_cli, write_connection
from atoll.partition import partition_csv
from atoll.processes import ManagedProcess, flower_env, spawn
from atoll.runs import APP_DIR, CONNECTION, follow_run
from common.contract import load_contract
from common.encoding import Encoder
from common.model import build_model
from common.synth import write_csv

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "contracts" / "synthetic.yaml"
CANARY = f"CANARY{uuid.uuid4().hex[:12]}"
SEED = 42


# ---- tools -------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None
    )
    if found is None:
        pytest.fail(
            f"{name} is not installed; this test runs it for real: `make system-deps` "
            "(apt-get install nginx-light tcpdump)"
        )
    return found


def _start_capture(pcap: Path, ports: list[int], log: Path) -> ManagedProcess:
    """tcpdump on loopback for the given TCP ports; returns once it is capturing."""
    if os.geteuid() != 0:
        pytest.fail("capturing loopback traffic needs root (CAP_NET_RAW); run the tests as root")
    filt = " or ".join(f"tcp port {p}" for p in ports)
    argv = [_tool("tcpdump"), "-i", "lo", "-n", "-U", "-s", "0", "-Z", "root", "-w", str(pcap)]
    proc = spawn("tcpdump", [*argv, filt], log, flower_env())
    deadline = time.monotonic() + 20
    while "listening on lo" not in proc.log_text():
        if not proc.alive or time.monotonic() > deadline:
            proc.stop()
            pytest.fail(f"tcpdump did not start capturing: {proc.log_text()[-500:]}")
        time.sleep(0.1)
    return proc


def _trusted_entities(path: Path) -> Path:
    """A YAML of one Ed25519 public key: the only publisher this node would run apps from."""
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    openssh = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path.write_text(yaml.safe_dump({f"fpk_{uuid.uuid4()}": openssh.decode() + " atoll-publisher"}))
    return path


def _wait_for_nodes(fed: LocalFederation, count: int, timeout: float = 90) -> None:
    """All `count` SuperNodes are online, so the run's roll call reaches every one of them."""
    deadline = time.monotonic() + timeout
    online = 0
    home = fed.coordinator_home / "flwr"
    while time.monotonic() < deadline:
        res = flwr_cli(["supernode", "list", CONNECTION, "--format", "json"], home)
        if res.returncode == 0:
            nodes = json.loads(res.stdout[res.stdout.index("{") :])["nodes"]
            online = sum(1 for n in nodes if n["status"] == "online")
            if online >= count:
                return
        time.sleep(1)
    logs = {p.name: p.read_text()[-400:] for p in fed.logs.glob("node-*.log")}
    pytest.fail(f"only {online} of {count} SuperNodes came online: {logs}")


# ---- the federation ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    _tool("nginx")
    work = tmp_path_factory.mktemp("zero-trust")
    csv = write_csv(work / "synthetic.csv", 1500, seed=3, departments=3)
    parts = partition_csv(csv, "department", 3, work / "silos")
    frame = pd.read_csv(parts[0].path, dtype=str, keep_default_na=False)
    frame.loc[0, "customer_id"] = f"{CANARY}-ID"
    frame.loc[1, "plan"] = f"{CANARY}-PLAN"
    frame.to_csv(parts[0].path, index=False)

    fed = LocalFederation(work / "fed", proxy=True)
    outputs: list[str] = []
    with fed:
        fed.start_coordinator()
        assert fed.app_store_url is not None
        store_port = int(fed.app_store_url.rsplit(":", 1)[1])
        capture = _start_capture(
            work / "loopback.pcap",
            [fed.superlink_port, fed.proxy_port, store_port],
            fed.logs / "tcpdump.log",
        )
        fed.processes["tcpdump"] = capture
        for part in parts[:2]:
            fed.add_node(part.name, part.path, CONTRACT)
        other_publisher = fed.add_node(
            parts[2].name,
            parts[2].path,
            CONTRACT,
            trusted_entities=_trusted_entities(work / "trusted-entities.yaml"),
        )
        _wait_for_nodes(fed, 3)
        config = {
            "num-server-rounds": 1,
            "min-nodes": 2,
            "contract-path": str(CONTRACT),
            "round-timeout": 120,
            "seed": SEED,
            "sample-rate": 0.05,  # small silos: rows × q must reach the owners' minimum batch
        }
        outcome = fed.run(config, on_line=outputs.append, timeout=600)
        capture.stop()
        unsigned_outputs: list[str] = []
        nodes = [n for n in fed.processes if n.startswith("node:")]
        log_marks = {n: len(fed.processes[n].log_text()) for n in nodes}
        unsigned = follow_run(  # what `flwr run .` submits: a FAB without any signature
            flwr_home=fed.coordinator_home / "flwr",
            config={**config, "round-timeout": 30},
            work=fed.coordinator_home,
            log_path=fed.logs / "unsigned-run.log",
            on_line=unsigned_outputs.append,
            timeout=300,
            app=APP_DIR,
        )
        yield {
            "fed": fed,
            "parts": parts,
            "outcome": outcome,
            "outputs": outputs,
            "unsigned": unsigned,
            "unsigned_outputs": unsigned_outputs,
            "log_marks": log_marks,
            "other_publisher": other_publisher,
            "pcap": work / "loopback.pcap",
            "work": work,
        }


def test_nodes_train_through_the_proxy(run: dict[str, Any]) -> None:
    fed: LocalFederation = run["fed"]
    out = run["outcome"]
    assert out.exit_code == 0 and out.model_version is not None, "\n".join(run["outputs"][-40:])
    assert fed.node_address != fed.address  # nodes were given the proxy, not the SuperLink
    for name in ("node-1", "node-2"):
        assert f"--superlink {fed.node_address}" in " ".join(
            fed.processes[f"node:{name}"].popen.args  # type: ignore[arg-type]
        )
    access = (fed.coordinator_home / "proxy" / "access.log").read_text()
    fleet_ok = re.findall(r'"POST /v1/fleet/([a-z-]+)" 200', access)
    assert {"pull-messages", "push-messages", "get-fab"} <= set(fleet_ok), access[-2000:]
    assert "/v1/control/" not in access  # nodes never tried the control plane


def _proxy_client(fed: LocalFederation) -> httpx.Client:
    assert fed.tls is not None
    ctx = ssl.create_default_context(cafile=str(fed.tls.ca_cert))
    return httpx.Client(base_url=f"https://{fed.node_address}", verify=ctx, timeout=20)


def test_node_side_client_cannot_list_or_start_runs(run: dict[str, Any]) -> None:
    fed: LocalFederation = run["fed"]
    assert fed.tls is not None
    node_home = run["work"] / "node-side-flwr"  # what a node's host could configure
    write_connection(node_home, "via-proxy", fed.node_address, fed.tls.ca_cert)
    listed = flwr_cli(["ls", "via-proxy", "--format", "json"], node_home)
    refused = json.loads(listed.stdout)
    assert refused["success"] is False, refused
    assert "only the Fleet API is served here" in json.dumps(refused)
    assert run["outcome"].run_id not in listed.stdout
    plain = flwr_cli(["ls", "via-proxy"], node_home)
    assert plain.returncode != 0, plain.stdout[-500:]
    # the same command on the coordinator host, straight to the SuperLink, works
    direct = flwr_cli(["ls", CONNECTION, "--format", "json"], fed.coordinator_home / "flwr")
    assert direct.returncode == 0 and run["outcome"].run_id in direct.stdout

    attempts = [
        "/v1/control/list-runs",
        "/v1/control/start-run",
        "/v1/control/stop-run",
        "/v1/control/register-node",
        "/v1/control/list-nodes",
        "/v1/runtime/acquire-task",
        "/v1/fleet/%2e%2e/control/list-runs",
        "/v1/fleet/..%2Fcontrol%2Flist-runs",
        "/v1/fleet/list-runs/",
        "/docs",
        "/health",
    ]
    with _proxy_client(fed) as client:
        for path in attempts:
            r = client.post(path, content=b"", headers={"content-type": "application/protobuf"})
            assert r.status_code == 403, (path, r.status_code)
        assert client.get("/v1/fleet/pull-messages").status_code == 403  # POST only
    access = (fed.coordinator_home / "proxy" / "access.log").read_text()
    assert '"POST /v1/control/list-runs" 403' in access


def test_nodes_run_the_coordinator_signed_build(run: dict[str, Any]) -> None:
    fed: LocalFederation = run["fed"]
    assert fed.app_signing is not None
    store_log = fed.processes["app-store"].log_text()
    assert '"POST /v1/hub/fetch-fab HTTP/1.1" 200' in store_log  # the SuperLink fetched it
    index = json.loads((fed.app_store_dir / "index.json").read_text())
    (stored,) = index.values()
    assert f"/v1/fabs/{stored['fab_hash']}.fab" in store_log
    for name in ("node-1", "node-2"):
        proc = fed.processes[f"node:{name}"]
        args = " ".join(proc.popen.args)  # type: ignore[arg-type]
        assert f"--trusted-entities {fed.app_signing.trusted_entities}" in args
        assert "Receiving: train" in proc.log_text()
        assert "verif" not in proc.log_text()[: run["log_marks"][f"node:{name}"]].lower()


def test_wrongly_signed_app_is_refused_by_a_node(run: dict[str, Any]) -> None:
    """node-3 trusts another publisher: the coordinator-signed build is not signed by it."""
    fed: LocalFederation = run["fed"]
    other: ManagedProcess = run["other_publisher"]
    log = other.log_text()[: run["log_marks"]["node:node-3"]]
    assert "FAB verification failed" in log
    assert "Receiving: train" not in other.log_text()  # it never got (or ran) a training task
    joined = "\n".join(run["outputs"])
    assert re.search(r"did not join: .*verif", joined, re.IGNORECASE), joined[-3000:]
    with sqlite3.connect(fed.coordinator_home / "registry.db") as conn:
        rows = conn.execute("SELECT participants FROM model_versions").fetchall()
    assert len(rows) == 1  # only the signed run published
    names = {p["name"] for p in json.loads(rows[0][0])}
    assert names == {"node-1", "node-2"}


def test_unsigned_app_is_refused_by_every_node(run: dict[str, Any]) -> None:
    fed: LocalFederation = run["fed"]
    unsigned = run["unsigned"]
    joined = "\n".join(run["unsigned_outputs"])
    assert unsigned.model_version is None, joined[-3000:]
    assert "ATOLL published" not in joined
    for name, mark in run["log_marks"].items():
        after = fed.processes[name].log_text()[mark:]
        assert "The FAB could not be verified" in after, (name, after[-1500:])
        assert "Receiving: train" not in after


def test_wrongly_signed_or_altered_app_fails_verification() -> None:
    """Flower's own check, on real Ed25519 signatures: only the trusted key over these bytes."""
    trusted, forger = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    pub = trusted.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    entities = {"fpk_publisher": pub.decode()}
    content = (ROOT / "pyproject.toml").read_bytes()

    def fab(signer: ed25519.Ed25519PrivateKey, signed: bytes, shipped: bytes) -> Fab:
        at = int(time.time())
        sig = sign_message(signer, create_message_to_sign(hashlib.sha256(signed).digest(), at))
        record = {"signature": base64.urlsafe_b64encode(sig).decode().rstrip("="), "signed_at": at}
        verifications = {"valid_license": "true", "fpk_publisher": json.dumps(record)}
        return Fab(hashlib.sha256(shipped).hexdigest(), shipped, verifications)

    assert _verify_fab(fab(trusted, content, content), entities)  # the control case
    assert not _verify_fab(fab(forger, content, content), entities)
    assert not _verify_fab(fab(trusted, content, content + b"\n# injected"), entities)


# ---- the capture -------------------------------------------------------------------------------


def _tcp_payloads(pcap: bytes) -> dict[tuple[int, int], bytes]:
    """TCP payload bytes per (source port, destination port), in capture order."""
    magic = pcap[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise AssertionError("not a pcap file")
    linktype = struct.unpack(endian + "I", pcap[20:24])[0]
    link_header = {1: 14, 113: 16, 276: 20, 0: 4}[linktype]
    flows: dict[tuple[int, int], bytearray] = defaultdict(bytearray)
    pos = 24
    while pos + 16 <= len(pcap):
        caplen = struct.unpack(endian + "I", pcap[pos + 8 : pos + 12])[0]
        frame = pcap[pos + 16 : pos + 16 + caplen]
        pos += 16 + caplen
        ip = frame[link_header:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        tcp = ip[(ip[0] & 0x0F) * 4 :]
        src, dst = struct.unpack(">HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:
            flows[(src, dst)] += payload
    return {k: bytes(v) for k, v in flows.items()}


def _initial_weights() -> bytes:
    """The float32 bytes of the model the run started from (the ServerApp's seeded init)."""
    torch.manual_seed(SEED)
    model = build_model("logreg", Encoder(load_contract(CONTRACT)).n_features)
    weights = model.state_dict()["0.weight"].numpy().tobytes()
    # the bytes Flower would put on the wire, were it not for TLS
    assert weights in ArrayRecord(model.state_dict())["0.weight"].data
    return weights


def test_capture_holds_tls_only(run: dict[str, Any]) -> None:
    fed: LocalFederation = run["fed"]
    raw = run["pcap"].read_bytes()
    flows = _tcp_payloads(raw)
    ports = {fed.superlink_port, fed.proxy_port}
    to_servers = b"".join(v for (_s, d), v in flows.items() if d in ports)
    everything = b"".join(flows.values())
    # we captured the real traffic: nodes to the proxy, the proxy and the ServerApp to the SuperLink
    assert any(d == fed.proxy_port for _s, d in flows), "no node traffic captured"
    assert any(d == fed.superlink_port for _s, d in flows), "no SuperLink traffic captured"
    assert len(everything) > 50_000, f"only {len(everything)} payload bytes captured"
    # every connection opens with a TLS ClientHello, then TLS records
    opened = [v for (_s, d), v in flows.items() if d in ports]
    assert opened and all(v[:1] == b"\x16" and v[5:6] == b"\x01" for v in opened)
    assert b"\x17\x03\x03" in to_servers  # TLS application data
    # nothing readable: no canary, no HTTP, no Flower headers, no paths, no weights
    contract_path = str(CONTRACT).encode()
    for marker in (
        CANARY.encode(),
        b"POST /v1/",
        b"HTTP/1.1",
        b"flwr-public-key",
        b"/v1/fleet/",
        contract_path,
        b"synthetic-churn",
        _initial_weights(),
    ):
        assert marker not in everything, marker[:40]
    assert CANARY.encode() not in raw
