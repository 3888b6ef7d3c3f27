"""Governance over HTTP: budgets as nodes reported them, the audit trail (query, export, verify),
and the API's own audit log of every call — which fails the request rather than go unrecorded."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers.api import CANARY, RECORD, logreg_weights, publish, publisher_pub

from privacy.audit import AuditLog, AuditSigner, query
from server.api.app import create_app
from server.api.audit_trail import key_change_recorder
from server.api.auth import ApiKeyStore
from server.registry import Registry
from server.spend_reports import SpendReports


@dataclass
class Gov:
    client: TestClient
    url: str
    db: Path
    keys: dict[str, str]

    def get(self, path: str, role: str = "governance"):
        return self.client.get(path, headers={"Authorization": f"Bearer {self.keys[role]}"})


@pytest.fixture
def gov(tmp_path: Path) -> Iterator[Gov]:
    db = tmp_path / "registry.db"
    url = f"sqlite:///{db}"
    with Registry(url) as registry:
        publish(registry, "toy", "logreg", logreg_weights([1.0, 0, 0, 0, 0, 0], 0.0))
    reports = SpendReports(url)
    for run, eps_run, total in (("101", 1.2, 1.2), ("202", 0.9, 1.7)):
        reports.record(
            run_id=run,
            node="node-1",
            task="churn",
            status="participated",
            metrics={"epsilon": eps_run, "epsilon-total": total, "epsilon-cap": 8.0, "delta": 1e-5},
        )
    reports.record(
        run_id="202",
        node="node-id:99",
        task="churn",
        status="refused",
        reason="budget exceeded for this node: ...",
    )
    reports.close()
    coordinator_key = tmp_path / "coord" / "coordinator.pem"
    with AuditLog(url, "coordinator", AuditSigner.create(coordinator_key)) as log:
        for i in range(5):
            log.append("service:coordinator", "round.reply", "run:202", {"round": i})
    with ApiKeyStore.open(url) as store:
        keys = {
            role: store.create(f"t-{role}", role)[1] for role in ("app", "analyst", "governance")
        }
    api_key = tmp_path / "api-audit" / "api.pem"
    AuditSigner.create(api_key)  # `atoll audit keygen`: its .pub is pinned below
    app = create_app(
        url,
        registry_public_keys=[publisher_pub()],
        rate_per_second=1000,
        rate_burst=1000,
        audit_key=api_key,
        audit_public_keys=[AuditSigner.public_key_path(coordinator_key)],
        api_public_keys=[AuditSigner.public_key_path(api_key)],
    )
    with TestClient(app) as client:
        yield Gov(client, url, db, keys)


def test_budgets_per_node_and_per_run(gov: Gov) -> None:
    budgets = {b["node"]: b for b in gov.get("/budgets").json()}
    node = budgets["node-1"]
    assert node["spent_epsilon"] == 1.7 and node["cap_epsilon"] == 8.0
    assert node["remaining_epsilon"] == pytest.approx(6.3) and node["delta"] == 1e-5
    assert [r["run_id"] for r in node["runs"]] == ["101", "202"]
    assert gov.get("/budgets/node-1").json()["spent_epsilon"] == 1.7
    assert gov.get("/budgets/nobody").status_code == 404
    run = gov.get("/runs/202/privacy").json()
    assert run["participants"] == 1 and run["refused"] == 1 and run["max_epsilon"] == 0.9
    assert gov.get("/budgets", role="app").status_code == 403  # apps never see budgets


def test_audit_query_export_and_verify(gov: Gov) -> None:
    entries = gov.get("/audit?log=coordinator&action=round.reply").json()
    assert [e["details"]["round"] for e in entries] == [0, 1, 2, 3, 4]
    lines = gov.get("/audit/export?log=coordinator").text.strip().splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["seq"] == 1
    report = gov.get("/audit/verify?log=coordinator").json()
    assert report["ok"] and report["entries"] == 5
    with sqlite3.connect(gov.db) as conn:  # someone edits an entry in the database
        conn.execute(
            "UPDATE audit_entries SET details = '{\"round\":9}' "
            "WHERE log_id = 'coordinator' AND seq = 3"
        )
    report = gov.get("/audit/verify?log=coordinator").json()
    assert not report["ok"] and report["first_bad_seq"] == 3
    assert gov.get("/audit?log=coordinator", role="analyst").status_code == 403


def test_every_call_is_recorded_without_values(gov: Gov) -> None:
    record = {**RECORD, "plan": CANARY}  # an unknown category: scored, warned, never echoed
    resp = gov.client.post(
        "/models/toy/predict",
        json={"records": [record, RECORD]},
        headers={"Authorization": f"Bearer {gov.keys['app']}"},
    )
    assert resp.status_code == 200, resp.text
    gov.get("/models/toy", role="analyst")
    gov.client.get("/models", headers={"Authorization": "Bearer atoll_nothing_here"})
    gov.client.app.state.auth_failures.flush(everything=True)  # what the minute's close does
    entries = query(gov.url, "api", limit=100)
    by_action: dict[str, list] = {}
    for e in entries:
        by_action.setdefault(e.action, []).append(e)
    predict = by_action["api.predict"][0]
    assert predict.details["records"] == 2 and predict.details["version"] == 1
    assert predict.details["role"] == "app" and predict.actor.startswith("apikey:")
    assert predict.subject == "model:toy/v1"
    assert by_action["api.model_read"][0].details["route"] == "/models/{name}"
    assert "auth.failed" in by_action
    assert CANARY not in json.dumps([e.to_json_dict() for e in entries])
    assert gov.get("/audit/verify?log=api").json()["ok"]


def test_a_failed_audit_write_fails_the_request(gov: Gov) -> None:
    with sqlite3.connect(gov.db) as conn:
        conn.execute("DROP TABLE audit_entries")
    resp = gov.client.post(
        "/models/toy/predict",
        json={"records": [RECORD]},
        headers={"Authorization": f"Bearer {gov.keys['app']}"},
    )
    assert resp.status_code == 503
    assert "audit" in resp.json()["detail"]
    assert gov.get("/models", role="analyst").status_code == 503


def test_key_changes_are_audited_before_they_happen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    recorder = key_change_recorder(url, tmp_path / "keys" / "operator.pem")
    with ApiKeyStore.open(url, on_event=recorder) as store:
        info, secret = store.create("crm", "app")
        store.rotate(info.key_id)
        store.revoke(info.key_id)
    entries = query(url, "admin")
    assert [e.action for e in entries] == ["key.created", "key.rotated", "key.revoked"]
    assert {e.subject for e in entries} == {f"key:{info.key_id}"}
    # The secret part is URL-safe base64 and may itself contain "_": split at most twice.
    secret_part = secret.split("_", 2)[2]
    assert len(secret_part) == 43
    assert secret_part not in json.dumps([e.to_json_dict() for e in entries])
