"""A federated analytics query on the real deployment engine (SuperLink, TLS, node auth).

Three SuperNodes on Telco split by `Contract`; the query is a run of the same signed app with the
run-config key `query` set. Checks: the result is stored with its ε per node and intervals, it is
close to the pooled truth, every node's ledger holds one `analytics` release, the query is in the
coordinator's and the nodes' audit logs, and a node whose owner does not allow analytics refuses.
Then an analyst submits a second query through the API (`POST /queries`), which runs on the same
engine in the background and is polled until its stored result is in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from atoll.federation import LocalFederation
from atoll.partition import partition_csv
from common.analytics_math import epsilon_of
from common.contract import load_contract
from privacy.audit import query as audit_entries
from privacy.ledger import Ledger, Policy
from server.analytics import QueryStore
from server.api.app import create_app
from server.drift import DriftStore
from server.query_jobs import QueryRunnerSettings, QuerySubmitter

pytestmark = [pytest.mark.e2e, pytest.mark.analytics]

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "contracts" / "telco_churn.yaml"
ANALYTICS = Policy(
    cap_epsilon=10, delta=1e-5, allowed_purposes=["training", "evaluation", "analytics"]
)
QUERY = {"kind": "rate", "field": "Churn", "group_by": ["InternetService"], "noise_multiplier": 2.0}


def test_a_query_runs_through_the_deployment_engine(tmp_path: Path, shared_data: Path) -> None:
    telco = shared_data / "Telco-Customer-Churn.csv"
    with LocalFederation(tmp_path / "fed") as fed:
        parts = partition_csv(telco, "Contract", 3, tmp_path / "silos")
        fed.start_coordinator()
        for part in parts[:2]:
            fed.add_node(part.name, part.path, CONTRACT, policy=ANALYTICS)
        fed.add_node(parts[2].name, parts[2].path, CONTRACT)  # default policy: no analytics
        outcome = fed.run(
            {
                "contract-path": str(CONTRACT),
                "query": json.dumps(QUERY),
                "min-nodes": 3,
                "round-timeout": 120,
            },
            timeout=600,
        )
        assert outcome.exit_code == 0, (fed.logs / "runs.log").read_text()[-3000:]
        store = QueryStore(fed.registry_url)
        record = store.by_run(str(outcome.run_id))
        assert record is not None
        row = record.as_dict()
        store.close()
        answered = sorted(n for n, v in row["nodes"].items() if v["status"] == "answered")
        assert answered == sorted(p.name for p in parts[:2])
        refused = row["nodes"][parts[2].name]
        assert refused["status"] == "refused" and "budget-purpose" in refused["reason"]
        eps = epsilon_of(2.0, 1e-5)
        assert row["result"]["epsilon_per_node"] == pytest.approx({n: eps for n in answered})
        frame = pd.concat(pd.read_csv(p.path, dtype=str) for p in parts[:2])
        fibre = frame[frame["InternetService"] == "Fiber optic"]
        truth = (fibre["Churn"] == "Yes").mean()
        cell = next(r for r in row["result"]["rows"] if r["cell"] == ["Fiber optic"])
        assert cell["low"] <= cell["estimate"] <= cell["high"]
        assert abs(cell["estimate"] - truth) < 0.05
        for part in parts:
            ledger = Ledger(fed.workdir / "nodes" / part.name / "state")
            actions = [e.action for e in audit_entries(ledger.engine, f"node:{part.name}")]
            assert "request.received" in actions
            if part.name in answered:
                assert ledger.epsilon() == pytest.approx(eps)
                assert "query.admitted" in actions and "reply.sent" in actions
            else:
                assert ledger.status().events == 0 and "request.refused" in actions
            ledger.close_db()
        coordinator = [e.action for e in audit_entries(fed.registry_url, "coordinator")]
        assert "query.started" in coordinator and "query.answered" in coordinator
        _an_analyst_submits_through_the_api(fed, parts[0].name)
        _training_leaves_the_drift_reference(fed, [p.name for p in parts])


def _training_leaves_the_drift_reference(fed: LocalFederation, names: list[str]) -> None:
    """A training run on the same engine: the two nodes whose owners allow analytics release
    their drift reference on finish (charged analytics/drift); the ServerApp stores it as the
    published model's; the third node releases none."""
    outcome = fed.run(
        {"contract-path": str(CONTRACT), "num-server-rounds": 2, "min-nodes": 3}, timeout=600
    )
    assert outcome.exit_code == 0, (fed.logs / "runs.log").read_text()[-3000:]
    assert outcome.model_name is not None and outcome.model_version is not None
    store = DriftStore(fed.registry_url)
    reference = store.latest(outcome.model_name, outcome.model_version, "reference")
    store.close()
    assert reference is not None and reference.report["source"] == "finish"
    features = [f.name for f in load_contract(CONTRACT).features]
    assert list(reference.histograms) == features
    assert reference.report["participants"] == sorted(names[:2])
    for name in names:
        ledger = Ledger(fed.workdir / "nodes" / name / "state")
        charged = [
            e.details.get("purpose")
            for e in audit_entries(ledger.engine, f"node:{name}")
            if e.action == "release.charged"
        ]
        ledger.close_db()
        assert charged.count("analytics/drift") == (1 if name in names[:2] else 0), name
    coordinator = [e.action for e in audit_entries(fed.registry_url, "coordinator")]
    assert "drift.reference" in coordinator


def _an_analyst_submits_through_the_api(fed: LocalFederation, a_node: str) -> None:
    """The same engine, from `POST /queries`: submitted in the background, polled, stored."""
    assert fed.last_app is not None
    key = fed.create_api_key("analyst")
    app = create_app(
        fed.registry_url, registry_public_keys=[fed.publishing_key.with_suffix(".pub")]
    )
    settings = QueryRunnerSettings(
        flwr_home=fed.coordinator_home / "flwr",
        contracts_dir=fed.contracts_dir,
        app=fed.last_app.spec,
        min_nodes=3,
    )
    spec = {"kind": "mean", "field": "MonthlyCharges", "group_by": ["PaymentMethod"], "epsilon": 1}
    body = {"contract_hash": load_contract(CONTRACT).hash, "spec": spec}
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(app) as client:
        client.app.state.query_submitter = QuerySubmitter(settings)  # type: ignore[attr-defined]
        sent = client.post("/queries", json=body, headers=headers)
        assert sent.status_code == 202, sent.text
        done = client.get(f"/queries/submissions/{sent.json()['id']}", headers=headers).json()
        assert done["status"] == "answered", done
        row = client.get(f"/queries/{done['query_id']}", headers=headers).json()
    assert row["spec"]["kind"] == "mean" and row["run_id"] == done["run_id"]
    assert len(row["result"]["participants"]) == 2  # the third node's owner allows no analytics
    assert all(0.99 <= e <= 1.0 for e in row["result"]["epsilon_per_node"].values())
    ledger = Ledger(fed.workdir / "nodes" / a_node / "state")
    assert ledger.status().events == 2  # the CLI's query and the analyst's, both charged
    ledger.close_db()
