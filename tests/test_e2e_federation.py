"""End to end on the real deployment engine: SuperLink + 3 SuperNodes over TLS with node auth.

Telco churn data split by `Contract` into three silos; one silo carries planted canary values.
Checks: a model is published and served (HTTPS, API keys: an app key scores, an analyst key reads
cards), held-out customers are scored with ROC AUC >= 0.80, an unregistered node is refused, no
canary value leaves its node, and every process is stopped.
"""

from __future__ import annotations

import copy
import os
import re
import sqlite3
import ssl
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization
from sklearn.metrics import roc_auc_score

from atoll.federation import LocalFederation
from atoll.partition import partition_csv
from client.split import split_mask
from common.contract import load_contract
from privacy.audit import Checkpoint, crosscheck, load_public_keys, query, verify
from privacy.ledger import Ledger, Policy
from server.registry import Registry
from server.spend_reports import SpendReports

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "contracts" / "telco_churn.yaml"
CANARY = f"CANARY{uuid.uuid4().hex[:12]}"
CANARY_NUMBER = "987654.3210123"
ROLES = ("app", "analyst", "governance")


def _plant_canary(silo: Path) -> None:
    """A customer whose id, an unknown category and an out-of-range number are unique strings."""
    frame = pd.read_csv(silo, dtype=str, keep_default_na=False)
    row = frame.iloc[0].copy()
    row["customerID"] = f"{CANARY}-ID"
    row["PaymentMethod"] = f"{CANARY}-PAY"
    row["MonthlyCharges"] = CANARY_NUMBER
    bad = row.copy()  # and a row that must be rejected (not a number)
    bad["customerID"] = f"{CANARY}-ID2"
    bad["tenure"] = f"{CANARY}-TENURE"
    pd.concat([frame, pd.DataFrame([row, bad])]).to_csv(silo, index=False)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    telco = shared_data / "Telco-Customer-Churn.csv"
    work = tmp_path_factory.mktemp("federation")
    fed = LocalFederation(work)
    outputs: list[str] = []
    with fed:
        parts = partition_csv(telco, "Contract", 3, work / "silos")
        _plant_canary(parts[0].path)
        fed.start_coordinator()
        for part in parts:
            fed.add_node(part.name, part.path, CONTRACT)
        intruder = fed.add_node("intruder", parts[1].path, CONTRACT, register=False)
        fifo = work / "broke.fifo"  # opening this would block: proves the data is never read
        os.mkfifo(fifo)
        fed.add_node("broke", fifo, CONTRACT, policy=Policy(cap_epsilon=0.5, delta=1e-5))
        outcome = fed.run(
            {
                "num-server-rounds": 3,
                "min-nodes": 3,
                "noise-multiplier": 1.0,
                "contract-path": str(CONTRACT),
                "round-timeout": 120,
            },
            on_line=outputs.append,
            timeout=1500,
        )
        api = fed.start_api()
        ca = ssl.create_default_context(cafile=str(fed.tls.ca_cert))
        bearer = {role: {"Authorization": f"Bearer {fed.create_api_key(role)}"} for role in ROLES}
        clients = {r: httpx.Client(base_url=api, verify=ca, headers=h) for r, h in bearer.items()}
        clients["anonymous"] = httpx.Client(base_url=api, verify=ca)
        yield {
            "fed": fed,
            "parts": parts,
            "outcome": outcome,
            "api": api,
            "outputs": outputs,
            "intruder": intruder,
            "telco": telco,
            "scorer": clients["app"],
            "reader": clients["analyst"],
            "anonymous": clients["anonymous"],
            "governance": clients["governance"],
        }
        for client in clients.values():
            client.close()
    # leaving the context stopped everything; the test below checks it


def test_run_publishes_a_model(federation) -> None:
    out = federation["outcome"]
    assert out.exit_code == 0, "\n".join(federation["outputs"][-40:])
    assert out.model_name == "telco-churn" and out.model_version == 1
    assert federation["api"].startswith("https://")
    card = federation["reader"].get("/models/telco-churn/versions/latest").json()
    assert card["contract_hash"] == load_contract(CONTRACT).hash
    assert sorted(p["name"] for p in card["participants"]) == ["node-1", "node-2", "node-3"]
    assert len(card["metrics"]["rounds"]) == 3
    eps = card["privacy"]["epsilon_per_node"]
    assert set(eps) == {"node-1", "node-2", "node-3"}
    assert all(0 < e < 50 for e in eps.values())


def test_held_out_customers_are_scored_well(federation) -> None:
    telco = pd.read_csv(federation["telco"], dtype=str, keep_default_na=False)
    held_out = telco[split_mask(telco["customerID"].to_numpy(), test_fraction=0.2)]
    assert 1000 < len(held_out) < 1900
    contract = load_contract(CONTRACT)
    records = held_out[contract.feature_names].copy()
    for f in contract.features:  # what a CRM sends: JSON numbers, null where unknown
        if f.type == "numeric":
            records[f.name] = pd.to_numeric(records[f.name], errors="coerce").astype(object)
    records = records.where(records.notna(), None)
    probs: list[float] = []
    for start in range(0, len(records), 500):
        chunk = records.iloc[start : start + 500]
        resp = federation["scorer"].post(
            "/models/telco-churn/predict",
            json={"records": chunk.to_dict(orient="records"), "top_k": 3},
            timeout=60,
        )
        assert resp.status_code == 200, resp.text[:500]
        preds = resp.json()["predictions"]
        assert len(preds) == len(chunk)
        assert all(len(p["reason_codes"]) == 3 for p in preds)
        probs += [p["probability"] for p in preds]
    y = (held_out["Churn"] == "Yes").to_numpy()
    auc = roc_auc_score(y, np.asarray(probs))
    assert auc >= 0.80, f"global held-out ROC AUC {auc:.3f}"


def _pem_of(openssh_pub: Path) -> str:
    key = serialization.load_ssh_public_key(openssh_pub.read_bytes())
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode().strip().splitlines()[1]  # first base64 line: unique to this key


def test_unregistered_node_is_refused(federation) -> None:
    fed: LocalFederation = federation["fed"]
    card = federation["reader"].get("/models/telco-churn/versions/latest").json()
    assert "intruder" not in {p["name"] for p in card["participants"]}
    assert "intruder" not in card["privacy"]["epsilon_per_node"]
    assert "Failed to activate SuperNode" in federation["intruder"].log_text()
    superlink_log = fed.processes["superlink"].log_text()
    refusals = [
        ln
        for ln in superlink_log.splitlines()
        if "No SuperNode found with the given public key" in ln
    ]
    intruder_key = _pem_of(fed.workdir / "nodes" / "intruder" / "keys" / "node.pub")
    assert any(intruder_key in ln for ln in refusals)
    for name in ("node-1", "node-2", "node-3"):  # registered keys were never refused
        assert not any(
            _pem_of(fed.workdir / "nodes" / name / "keys" / "node.pub") in ln for ln in refusals
        )


def test_canary_never_leaves_its_node(federation) -> None:
    fed: LocalFederation = federation["fed"]
    texts = list(federation["outputs"])
    texts.append(federation["anonymous"].get("/health").text)
    for path in ("/models", "/models/telco-churn", "/models/telco-churn/versions/latest"):
        texts.append(federation["reader"].get(path).text)
    texts.append(
        federation["scorer"]
        .post("/models/telco-churn/predict", json={"records": [{"PaymentMethod": CANARY}]})
        .text
    )
    for log in (fed.workdir / "logs").glob("*.log"):
        texts.append(log.read_text(errors="replace"))
    node_db = fed.workdir / "nodes" / "node-1" / "state" / "node-privacy.db"  # its own audit log
    for db in (
        fed.coordinator_home / "registry.db",
        fed.coordinator_home / "superlink-state.db",
        node_db,
    ):
        texts.append(db.read_bytes().decode("latin-1"))
        with sqlite3.connect(db) as conn:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"):
                texts.append(repr(conn.execute(f'SELECT * FROM "{table}"').fetchall()))
    blob = "\n".join(texts)
    assert len(blob) > 10_000  # we really looked at something
    assert CANARY not in blob
    assert CANARY_NUMBER not in blob


def test_roles_are_enforced_on_the_served_api(federation) -> None:
    """Least privilege on the real HTTPS process: an app scores only, an analyst reads only."""
    record = {"records": [{"tenure": 1}]}
    assert federation["scorer"].get("/models/telco-churn").status_code == 403
    assert federation["reader"].post("/models/telco-churn/predict", json=record).status_code == 403
    anonymous = federation["anonymous"].get("/models")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")


def test_over_budget_node_is_refused_and_the_run_goes_on(federation) -> None:
    fed: LocalFederation = federation["fed"]
    ledger = Ledger(fed.workdir / "nodes" / "broke" / "state")
    refusals = ledger.refusals()
    assert [r["code"] for r in refusals] == ["cap"]
    assert ledger.epsilon() == 0.0 and ledger.status().runs == []
    reports = SpendReports(fed.registry_url).rows(run_id=federation["outcome"].run_id)
    by_status = {}
    for r in reports:
        by_status.setdefault(r.status, []).append(r)
    assert sorted(r.node for r in by_status["participated"]) == ["node-1", "node-2", "node-3"]
    assert len(by_status["refused"]) == 1 and "budget exceeded" in by_status["refused"][0].reason
    card = federation["reader"].get("/models/telco-churn/versions/latest").json()
    for r in by_status["participated"]:  # card, coordinator view and node ledger agree
        node_ledger = Ledger(fed.workdir / "nodes" / r.node / "state")
        assert node_ledger.run_epsilon(r.run_id) == pytest.approx(r.epsilon_run)
        assert card["privacy"]["epsilon_per_node"][r.node] == pytest.approx(r.epsilon_run)
        assert node_ledger.status().runs[0].status == "closed"


def test_audit_logs_verify_and_node_digests_match_the_coordinator(federation) -> None:
    fed: LocalFederation = federation["fed"]
    run_id = federation["outcome"].run_id
    coord_keys = load_public_keys([fed.coordinator_home / "audit" / "coordinator.pub"])
    assert verify(fed.registry_url, "coordinator", coord_keys).ok
    checkpoints = sorted((fed.workdir / "checkpoints" / "coordinator").glob("*.json"))
    assert checkpoints  # one per run, signed, each extending the last; not beside the key
    assert not (fed.coordinator_home / "audit" / "checkpoints").exists()
    report = verify(fed.registry_url, "coordinator", coord_keys, Checkpoint.load(checkpoints[-1]))
    assert report.ok and report.checkpoint_seq
    coord = query(fed.registry_url, "coordinator", limit=10_000)
    actions = {e.action for e in coord}
    assert {
        "run.started",
        "node.joined",
        "node.refused",
        "round.reply",
        "model.published",
        "run.finished",
    } <= actions
    admin = query(fed.registry_url, "admin", action="node.registered")
    assert sorted(e.details["name"] for e in admin) == ["broke", "node-1", "node-2", "node-3"]
    for name in ("node-1", "node-2", "node-3"):
        state = fed.workdir / "nodes" / name / "state"
        url = f"sqlite:///{state / 'node-privacy.db'}"
        keys = load_public_keys([state / "audit-key" / "audit.pub"])
        assert verify(url, f"node:{name}", keys).ok
        node_entries = query(url, f"node:{name}", limit=10_000)
        sent = [
            e for e in node_entries if e.action == "reply.sent" and e.details["kind"] == "train"
        ]
        assert len(sent) == 3 and all(e.details["update_sha256"] for e in sent)
        assert crosscheck(coord, node_entries, nodes=[name], run=run_id) == []
        # a tampered digest on the coordinator side is caught
        forged = copy.deepcopy(coord)
        victim = next(
            e
            for e in forged
            if e.action == "round.reply"
            and e.details["node"] == name
            and e.details["kind"] == "train"
        )
        victim.details["update_sha256"] = "0" * 64
        problems = crosscheck(forged, node_entries, nodes=[name], run=run_id)
        assert len(problems) == 1 and problems[0].node == name


def test_governance_reads_budgets_and_verifies_the_trail_over_https(federation) -> None:
    gov = federation["governance"]
    run_id = federation["outcome"].run_id
    budgets = {b["node"]: b for b in gov.get("/budgets").json()}
    assert {"node-1", "node-2", "node-3"} <= set(budgets)
    assert all(
        0 < budgets[n]["spent_epsilon"] < budgets[n]["cap_epsilon"] for n in ("node-1", "node-2")
    )
    run = gov.get(f"/runs/{run_id}/privacy").json()
    assert run["participants"] == 3 and run["refused"] == 1
    report = gov.get("/audit/verify", params={"log": "coordinator"}).json()
    assert report["ok"] and report["entries"] > 10
    assert federation["scorer"].get("/budgets").status_code == 403
    api_log = gov.get("/audit", params={"log": "api", "action": "api.predict"}).json()
    assert api_log and all(e["details"]["records"] >= 1 for e in api_log)


def test_every_process_is_stopped(federation) -> None:
    fed: LocalFederation = federation["fed"]
    fed.stop()
    pids = [p.pid for p in fed.processes.values()]
    assert set(fed.processes) == {
        "app-store",
        "superlink",
        "node:node-1",
        "node:node-2",
        "node:node-3",
        "node:intruder",
        "node:broke",
        "api",
    } | {f"runtime:{n}" for n in ("node-1", "node-2", "node-3", "intruder", "broke")}
    for p in fed.processes.values():
        assert not p.alive
    time.sleep(0.5)
    leftovers = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
            pgid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
        except (OSError, ValueError, IndexError):
            continue
        if pgid in pids or str(fed.workdir) in cmd or str(fed.workdir) in environ:
            leftovers.append(f"{proc.name}: {cmd[:200]}")
    assert not leftovers, leftovers
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_one_message_per_node_per_round_and_evaluations_every_round(federation) -> None:
    """The protocol: per run a roll call, one train message per round, a finish; the global
    model of every round is evaluated (on the next train request, the last one on finish)."""
    fed: LocalFederation = federation["fed"]
    for name in ("node-1", "node-2", "node-3"):
        log = (fed.logs / f"{name}.log").read_text(errors="replace")
        kinds = re.findall(r"Receiving: (\S+)", log)
        assert kinds.count("train") == 3, kinds
        assert "evaluate" not in kinds
        runtime = (fed.logs / f"runtime-{name}.log").read_text(errors="replace")
        answered = re.findall(r"(\w+) answered", runtime)
        assert answered == ["rollcall", "train", "train", "train", "finish"], answered
    with Registry(fed.registry_url) as registry:  # the API may already be stopped
        rounds = registry.card("telco-churn").metrics["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert set(r["nodes"]) == {"node-1", "node-2", "node-3"}
        lo, hi = r["global"]["ci95"]["roc_auc"]  # every round: an estimate with its interval
        assert 0.0 <= lo <= hi <= 1.0


@pytest.mark.hardening
def test_no_secret_or_coordinator_path_leaves_the_coordinator(federation) -> None:
    """The registry URL, the audit and publishing keys' and the contract's locations are the
    coordinator's own settings (coordinator.toml, 0600; the run names its contract by hash): not
    in the SuperLink's state, any node's Flower files or a card."""
    fed: LocalFederation = federation["fed"]
    own = fed.coordinator_home / "coordinator.toml"
    assert own.stat().st_mode & 0o777 == 0o600
    needles = [fed.registry_url, str(fed.coordinator_home / "audit")]  # URL, key location
    needles += [str(CONTRACT.resolve()), str(fed.contracts_dir), str(fed.publishing_key.parent)]
    blobs = [p.read_bytes() for p in fed.coordinator_home.glob("superlink-state.db*")]
    for node_home in (fed.workdir / "nodes").iterdir():
        blobs += [p.read_bytes() for p in (node_home / "flwr").rglob("*") if p.is_file()]
    with Registry(fed.registry_url) as registry:
        blobs.append(registry.card("telco-churn").model_dump_json().encode())
    assert len(blobs) > 3
    for blob in blobs:
        text = blob.decode("latin-1")
        assert not [n for n in needles if n in text]
