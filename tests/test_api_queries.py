"""Federated analytics over HTTP for analysts: preview, submit, list, get, export.

Results are stored queries the nodes' own answer code produced (three toy silos, no noise, so
the expected rows are known); a submission is followed to its stored outcome through the real
submitter (`flwr run`) — here against a SuperLink that is not there, so it fails and says so.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.api import logreg_weights, publish, publisher_pub, toy_contract

from atoll import pki
from atoll.processes import free_port
from client.analytics_data import FieldTable
from client.runtime.analytics import admit_query, answer, answered
from common.analytics_math import Query, preview
from privacy.audit import AuditSigner, query
from server.analytics import QueryStore, result_of
from server.api.app import create_app
from server.api.auth import FORBIDDEN_DETAIL, ApiKeyStore
from server.api.deps import NOT_CONFIGURED
from server.drift import DriftStore
from server.query_jobs import QueryRunnerSettings, QuerySubmitter
from server.registry import Registry

pytestmark = pytest.mark.analytics

CHURN_BY_PLAN = {"kind": "rate", "field": "churned", "group_by": ["plan"], "noise_multiplier": 2}


@dataclass
class Api:
    client: TestClient
    url: str
    keys: dict[str, str]
    query_id: int

    def call(self, method: str, path: str, role: str = "analyst", **kw: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[role]}"}
        return self.client.request(method, path, headers=headers, **kw)  # type: ignore[arg-type]


def _silo(plans: list[int], churned: list[bool]) -> FieldTable:
    n = len(plans)
    return FieldTable(
        rows=n,
        categorical={"plan": np.array(plans, dtype=np.int64)},
        binary={"paperless": np.zeros(n, dtype=bool)},
        numeric={"tenure": np.full(n, 10.0), "monthly": np.full(n, 50.0)},
        label=np.array(churned, dtype=bool),
    )


SILOS = {  # plan codes: 0 basic, 1 pro, 2 <other>
    "north": _silo([0, 0, 1, 1, 1], [True, False, True, True, False]),
    "south": _silo([0, 1, 1], [False, False, True]),
    "east": _silo([0, 0, 0, 2], [True, True, False, False]),
}


def _store_a_query(url: str) -> int:
    contract = toy_contract()
    q = Query.model_validate(CHURN_BY_PLAN)
    aq = admit_query(q.to_pb(contract.hash), contract, _policy())
    answers = {
        name: answered(aq, *answer(aq, table, contract, np.zeros), name)
        for name, table in SILOS.items()
    }
    store = QueryStore(url)
    try:
        return store.add(
            run_id="42",
            kind="rate",
            status="answered",
            contract_name=contract.name,
            contract_hash=contract.hash,
            spec=q.model_dump(mode="json"),
            nodes={n: {"status": "answered"} for n in answers},
            result=result_of(q, aq.layout, answers),
        )
    finally:
        store.close()


def _policy():  # noqa: ANN202 - privacy.ledger.Policy
    from privacy.ledger import Policy

    return Policy(cap_epsilon=10)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    with Registry(url) as registry:
        publish(registry, "toy", "logreg", logreg_weights([1.0, 0, 0, 0, 0, 0], 0.0))
    qid = _store_a_query(url)
    with ApiKeyStore.open(url) as store:
        keys = {role: store.create(f"t-{role}", role)[1] for role in ("app", "analyst")}
    api_key = tmp_path / "api-audit" / "api.pem"
    AuditSigner.create(api_key)
    app = create_app(
        url,
        registry_public_keys=[publisher_pub()],
        rate_per_second=1000,
        rate_burst=1000,
        audit_key=api_key,
        api_public_keys=[AuditSigner.public_key_path(api_key)],
    )
    with TestClient(app) as client:
        yield Api(client, url, keys, qid)


def test_only_a_key_with_the_analysts_permission_reaches_queries(api: Api) -> None:
    assert api.client.get("/queries").status_code == 401
    for method, path in (("GET", "/queries"), ("GET", f"/queries/{api.query_id}")):
        denied = api.call(method, path, role="app")
        assert denied.status_code == 403 and denied.json() == {"detail": FORBIDDEN_DETAIL}
    body = {"model": "toy", "spec": CHURN_BY_PLAN}
    assert api.call("POST", "/queries/preview", role="app", json=body).status_code == 403
    assert api.call("POST", "/queries", role="app", json=body).status_code == 403


def test_preview_shows_the_cost_and_intervals_before_anything_is_spent(api: Api) -> None:
    body = {"model": "toy", "spec": CHURN_BY_PLAN, "nodes": 3, "target_half_width": 0.1}
    got = api.call("POST", "/queries/preview", json={**body, "cell_size": 100})
    assert got.status_code == 200, got.text
    expected = preview(
        Query.model_validate(CHURN_BY_PLAN),
        toy_contract(),
        nodes=3,
        delta=1e-5,
        target_half_width=0.1,
        cell_size=100,
    )
    assert got.json() == json.loads(json.dumps(expected))
    assert got.json()["cells"] == 3 and got.json()["for_target"]["epsilon_per_node"] > 0
    no_size = api.call("POST", "/queries/preview", json=body)  # a rate's width needs a size
    assert no_size.status_code == 422 and "cell size" in no_size.json()["detail"]
    outside = {
        "kind": "count",
        "noise_multiplier": 1,
        "filters": [{"field": "plan", "values": ["gold"]}],
    }
    bad = api.call("POST", "/queries/preview", json={"model": "toy", "spec": outside})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("[query-key]")
    both = {"model": "toy", "contract_hash": "0" * 64, "spec": CHURN_BY_PLAN}
    assert api.call("POST", "/queries/preview", json=both).status_code == 422
    invalid = api.call("POST", "/queries/preview", json={"model": "toy", "spec": {"kind": "x"}})
    assert invalid.status_code == 422 and "kind" in invalid.json()["detail"]
    gone = api.call("POST", "/queries/preview", json={"model": "nope", "spec": CHURN_BY_PLAN})
    assert gone.status_code == 404


def test_list_get_and_export_the_stored_results(api: Api) -> None:
    listed = api.call("GET", "/queries").json()
    assert [q["id"] for q in listed] == [api.query_id]
    assert listed[0]["participants"] == ["east", "north", "south"]
    one = api.call("GET", f"/queries/{api.query_id}").json()
    rows = {tuple(r["cell"]): r for r in one["result"]["rows"]}
    # pooled truth over the three silos: basic 3 of 6 churned, pro 3 of 5, <other> 0 of 1
    assert rows[("basic",)]["estimate"] == pytest.approx(0.5)
    assert rows[("pro",)]["estimate"] == pytest.approx(0.6)
    assert rows[("basic",)]["low"] < 0.5 < rows[("basic",)]["high"]
    assert rows[("<other>",)]["unreliable"]
    exported = api.call("GET", f"/queries/{api.query_id}/export")
    assert exported.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["cell"] for r in table] == ["basic", "pro", "<other>"]
    assert float(table[1]["estimate"]) == pytest.approx(0.6)
    as_json = api.call("GET", f"/queries/{api.query_id}/export", params={"format": "json"})
    assert as_json.json()["id"] == api.query_id and as_json.json()["spec"]["kind"] == "rate"
    assert api.call("GET", "/queries/999").status_code == 404
    assert api.call("GET", "/queries/999/export").status_code == 404
    assert api.call("GET", f"/queries/{api.query_id}/export?format=xml").status_code == 422
    actions = [e.action for e in query(api.url, "api", limit=100)]
    assert "api.query_read" in actions and "api.query_export" in actions


@pytest.mark.e2e  # starts the flwr CLI (against a SuperLink that is not there)
def test_a_submission_runs_in_the_background_and_reports_its_outcome(
    api: Api, tmp_path: Path
) -> None:
    body = {"model": "toy", "spec": CHURN_BY_PLAN}
    off = api.call("POST", "/queries", json=body)
    assert off.status_code == 503 and off.json()["detail"] == NOT_CONFIGURED
    tls = pki.create_tls(tmp_path / "certs")
    settings = QueryRunnerSettings(
        flwr_home=tmp_path / "flwr",
        contracts_dir=tmp_path / "contracts",
        superlink=f"127.0.0.1:{free_port()}",  # nothing listens there
        ca=tls.ca_cert,
        timeout=120,
    )
    api.client.app.state.query_submitter = QuerySubmitter(settings)  # type: ignore[attr-defined]
    bad = api.call("POST", "/queries", json={"model": "toy", "spec": {"kind": "sum"}})
    assert bad.status_code == 422  # checked before anything is submitted
    sent = api.call("POST", "/queries", json=body)
    assert sent.status_code == 202, sent.text
    sid = sent.json()["id"]
    assert sent.json()["status"] == "queued" and sent.json()["spec"]["kind"] == "rate"
    contract = toy_contract()
    assert (tmp_path / "contracts" / f"{contract.hash}.json").exists()  # staged for the run
    polled = api.call("GET", f"/queries/submissions/{sid}").json()  # the test client waited
    assert polled["status"] == "failed" and polled["query_id"] is None
    assert "stored no result" in polled["error"]
    assert api.call("GET", "/queries/submissions/99").status_code == 404
    submitted = [e for e in query(api.url, "api", limit=100) if e.action == "api.query_submit"]
    assert len(submitted) == 1 and submitted[0].subject == f"query-submission:{sid}"
    assert submitted[0].details["spec"]["group_by"] == ["plan"]


def test_the_model_shows_its_last_drift_check(api: Api) -> None:
    assert api.call("GET", "/models/toy/drift").json() == {
        "model": "toy",
        "version": 1,
        "last_check": None,
    }
    assert api.call("GET", "/models/toy/versions/1").json()["last_drift_check"] is None
    store = DriftStore(api.url)
    report = {"alpha": 0.05, "flagged": ["monthly"], "features": {"monthly": {"psi": 0.31234567}}}
    cid = store.add(
        model_name="toy",
        model_version=1,
        kind="check",
        contract_hash=toy_contract().hash,
        histograms={},
        report=report,
    )
    store.close()
    last = api.call("GET", "/models/toy/drift", params={"version": "1"}).json()["last_check"]
    assert last["check_id"] == cid and last["flagged"] == ["monthly"]
    assert last["psi"] == {"monthly": 0.3123}
    card = api.call("GET", "/models/toy/versions/latest").json()  # the card shows it too
    assert card["last_drift_check"] == last and card["weights_sha256"]
    assert api.call("GET", "/models/nope/drift").status_code == 404
    assert api.call("GET", "/models/toy/drift", role="app").status_code == 403
