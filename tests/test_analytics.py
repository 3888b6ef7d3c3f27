"""Federated analytics: node answers, budgets, intervals and the coordinator's sum, in process.

Telco split by `Contract` into three silos, as the demo does. Noise is injected (zero, or a
seeded generator), so the sums are checked against the pooled truth computed independently with
pandas, and the 95% intervals' coverage is measured over seeded repetitions.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from helpers.node import ROOT, caller, node_config, without_blocking
from typer.testing import CliRunner

from client.analytics_data import field_table
from client.node import NodeData, load_node_data
from client.runtime.analytics import AdmittedQuery, admit_query, answer, answered
from client.runtime.service import NodeService
from common import wire
from common.analytics_math import (
    Query,
    QueryError,
    epsilon_for_width,
    epsilon_of,
    expected_intervals,
    layout,
    sigma_for_epsilon,
)
from common.contract import Contract, load_contract
from common.encoding import OTHER
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from privacy.audit import query as audit_entries
from privacy.dp import PlannedEvent
from privacy.ledger import Ledger, Policy
from server.analytics import QueryStore, check_answer, result_of

pytestmark = pytest.mark.analytics

TELCO = ROOT / "contracts" / "telco_churn.yaml"
CANARY = "CANARYanalytics7f3e"
ANALYTICS = ["training", "evaluation", "analytics"]

CHURN_BY_INTERNET = {"kind": "rate", "field": "Churn", "group_by": ["InternetService"]}
CHARGES_BY_PAYMENT = {"kind": "mean", "field": "MonthlyCharges", "group_by": ["PaymentMethod"]}


@pytest.fixture(scope="module")
def contract() -> Contract:
    return load_contract(TELCO)


@pytest.fixture(scope="module")
def pooled(telco_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The whole file, with a canary id and a canary payment method (→ <other>)."""
    frame = pd.read_csv(telco_csv, dtype=str, keep_default_na=False)
    frame.loc[0, "customerID"] = CANARY
    frame.loc[1, "PaymentMethod"] = CANARY
    return frame


@pytest.fixture(scope="module")
def silos(pooled: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("silos")
    paths = {}
    for i, (_value, part) in enumerate(sorted(pooled.groupby("Contract"), key=lambda kv: kv[0])):
        paths[f"silo-{i + 1}"] = out / f"silo-{i + 1}.csv"
        part.to_csv(paths[f"silo-{i + 1}"], index=False)
    return paths


@pytest.fixture(scope="module")
def node_data(silos: dict[str, Path], contract: Contract) -> dict[str, NodeData]:
    return {name: load_node_data(str(path), contract) for name, path in silos.items()}


def _admit(spec: dict[str, Any], contract: Contract, policy: Policy | None = None) -> AdmittedQuery:
    q = Query.model_validate({"noise_multiplier": 2.0, **spec})
    return admit_query(q.to_pb(contract.hash), contract, policy or Policy(cap_epsilon=10))


def _federated(
    spec: dict[str, Any],
    contract: Contract,
    node_data: dict[str, NodeData],
    noise: Callable[[tuple[int, ...]], np.ndarray],
) -> list[dict[str, Any]]:
    """Each silo answers through the node code; the coordinator checks and sums the answers."""
    aq = _admit(spec, contract)
    answers = {}
    for name, data in node_data.items():
        values, std = answer(aq, field_table(data, contract), contract, noise)
        a = answered(aq, values, std, name)
        assert check_answer(a, aq.layout) is None
        answers[name] = a
    return result_of(aq.query, aq.layout, answers)["rows"]


def _truth(pooled: pd.DataFrame, contract: Contract) -> dict[str, dict[str, tuple[float, float]]]:
    """(numerator, count) per cell, straight from the CSV with pandas."""
    pm = contract.feature("PaymentMethod").vocabulary  # type: ignore[union-attr]
    pay = pooled["PaymentMethod"].where(pooled["PaymentMethod"].isin(pm), OTHER)
    charges = pooled["MonthlyCharges"].astype(float)
    churn = (pooled["Churn"] == "Yes").astype(float)
    return {
        "rate": {
            k: (
                float(churn[pooled["InternetService"] == k].sum()),
                float((pooled["InternetService"] == k).sum()),
            )
            for k in ["DSL", "Fiber optic", "No", OTHER]
        },
        "mean": {
            k: (float(charges[pay == k].sum()), float((pay == k).sum())) for k in [*pm, OTHER]
        },
    }


def zero(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape)


# ================================================================================================
# The node's answers, summed, are the pooled truth; intervals cover it ~95% of the time
# ================================================================================================
def test_three_silos_sum_to_the_pooled_truth_without_noise(
    pooled: pd.DataFrame, contract: Contract, node_data: dict[str, NodeData]
) -> None:
    assert sum(d.report.rows_accepted for d in node_data.values()) == len(pooled) == 7043
    truth = _truth(pooled, contract)
    rate = _federated(CHURN_BY_INTERNET, contract, node_data, zero)
    assert [r["cell"] for r in rate] == [["DSL"], ["Fiber optic"], ["No"], [OTHER]]
    for r in rate:
        pos, n = truth["rate"][r["cell"][0]]
        assert r["noisy_count"] == n
        if n:
            assert r["estimate"] == pytest.approx(pos / n, abs=1e-12)
        else:  # the empty <other> cell is answered like any other
            assert r["estimate"] is None and r["unreliable"]
    assert rate[1]["estimate"] == pytest.approx(0.4189, abs=1e-4)  # fibre churns most
    mean = _federated(CHARGES_BY_PAYMENT, contract, node_data, zero)
    for r in mean:
        s, n = truth["mean"][r["cell"][0]]
        assert r["noisy_count"] == n
        assert r["estimate"] == pytest.approx(s / n, rel=1e-6)  # float32 encoding: ~1e-7
    assert mean[-1]["cell"] == [OTHER] and mean[-1]["noisy_count"] == 1  # the canary's row
    count = _federated(
        {"kind": "count", "group_by": ["Contract", "PaperlessBilling"]}, contract, node_data, zero
    )
    assert sum(r["estimate"] for r in count) == 7043 and len(count) == 4 * 2


def test_intervals_cover_the_truth_about_95_percent_of_the_time(
    pooled: pd.DataFrame, contract: Contract, node_data: dict[str, NodeData]
) -> None:
    truth = _truth(pooled, contract)
    rng = np.random.default_rng(20261201)
    covered = total = 0
    for _ in range(60):
        for spec, kind in ((CHURN_BY_INTERNET, "rate"), (CHARGES_BY_PAYMENT, "mean")):
            for r in _federated(spec, contract, node_data, rng.standard_normal):
                num, n = truth[kind][r["cell"][0]]
                if n < 20:
                    continue  # no truth to cover (empty) or flagged unreliable
                total += 1
                covered += r["low"] <= num / n <= r["high"]
    assert total == 60 * 7
    assert 0.90 <= covered / total <= 0.99, covered / total


def test_histogram_and_quantiles_from_the_dp_histogram(
    pooled: pd.DataFrame, contract: Contract, node_data: dict[str, NodeData]
) -> None:
    hist = _federated(
        {"kind": "histogram", "field": "tenure", "bins": 8}, contract, node_data, zero
    )
    tenure = pooled["tenure"].astype(float)
    edges = np.linspace(0, 72, 9)
    expected, _ = np.histogram(tenure, bins=edges)
    assert [r["estimate"] for r in hist] == expected.tolist()
    q = _federated(
        {"kind": "quantile", "field": "MonthlyCharges", "bins": 100, "quantiles": [0.5]},
        contract,
        node_data,
        zero,
    )
    assert q[0]["estimate"] == pytest.approx(
        pooled["MonthlyCharges"].astype(float).median(), abs=1.5
    )
    noisy = _federated(
        {"kind": "quantile", "field": "MonthlyCharges", "bins": 50, "quantiles": [0.25, 0.75]},
        contract,
        node_data,
        np.random.default_rng(3).standard_normal,
    )
    assert all(r["low"] <= r["estimate"] <= r["high"] for r in noisy)


def test_filters_select_rows_before_cells(
    contract: Contract, node_data: dict[str, NodeData], pooled: pd.DataFrame
) -> None:
    spec = {
        "kind": "count",
        "group_by": ["InternetService"],
        "filters": [
            {"field": "tenure", "low": 0, "high": 12},
            {"field": "Churn", "values": ["true"]},
        ],
    }
    rows = _federated(spec, contract, node_data, zero)
    sel = pooled[(pooled["tenure"].astype(float) <= 12) & (pooled["Churn"] == "Yes")]
    assert [r["estimate"] for r in rows[:3]] == [
        float((sel["InternetService"] == k).sum()) for k in ["DSL", "Fiber optic", "No"]
    ]


# ================================================================================================
# Admission: keys, fields and limits are checked against the contract before anything else
# ================================================================================================
BAD_QUERIES = [
    ({"kind": "count", "filters": [{"field": "Contract", "values": ["Three year"]}]}, "query-key"),
    ({"kind": "count", "group_by": ["tenure"]}, "query-group-by"),
    ({"kind": "count", "group_by": ["customerID"]}, "query-field"),
    ({"kind": "count", "group_by": ["Contract", "Partner", "Dependents"]}, "query-invalid"),
    ({"kind": "rate", "field": "MonthlyCharges"}, "query-field"),
    ({"kind": "mean", "field": "InternetService"}, "query-field"),
    ({"kind": "histogram", "field": "tenure", "bins": 1000}, "query-bins"),
    ({"kind": "quantile", "field": "tenure", "bins": 10}, "query-quantiles"),
    ({"kind": "count", "noise_multiplier": 0.1}, "limit-noise"),
    ({"kind": "median"}, "query-invalid"),
]


@pytest.mark.parametrize(("spec", "code"), BAD_QUERIES, ids=[c for _, c in BAD_QUERIES])
def test_queries_outside_the_contract_or_limits_are_refused(
    contract: Contract, spec: dict[str, Any], code: str
) -> None:
    pbspec = pb.QuerySpec(contract_hash=contract.hash, noise_multiplier=2.0)
    pbspec.kind = spec["kind"]
    pbspec.field = spec.get("field", "")
    pbspec.group_by.extend(spec.get("group_by", []))
    pbspec.bins = spec.get("bins", 0)
    pbspec.noise_multiplier = spec.get("noise_multiplier", 2.0)
    for f in spec.get("filters", []):
        pbspec.filters.add(field=f["field"], values=f["values"])
    with pytest.raises(Exception) as err:
        admit_query(pbspec, contract, Policy(cap_epsilon=10))
    assert getattr(err.value, "code", None) == code, err.value


def test_layout_errors_name_the_problem(contract: Contract) -> None:
    with pytest.raises(QueryError, match="outside the contract's vocabulary"):
        layout(
            Query(
                kind="count",
                noise_multiplier=1,
                filters=[{"field": "Contract", "values": ["Lifetime"]}],
            ),
            contract,
        )


# ================================================================================================
# The node runtime: reserve → data → charge → answer → audit, refusals before data
# ================================================================================================
_call = without_blocking


def _service(tmp: Path, data: Path, policy: Policy | None = None) -> NodeService:
    policy = policy or Policy(cap_epsilon=10, delta=1e-5, allowed_purposes=ANALYTICS)
    return NodeService(node_config(tmp, data, contract=TELCO, policy=policy), seed=11)


def _request(contract: Contract, run: str = "901", **spec: Any) -> pb.QueryRequest:
    q = Query.model_validate({**CHURN_BY_INTERNET, "noise_multiplier": 3.0, **spec})
    return pb.QueryRequest(caller=caller(run), spec=q.to_pb(contract.hash))


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "data.csv"
    os.mkfifo(path)
    return path


def test_analytics_is_refused_unless_the_owner_allows_the_purpose(
    tmp_path: Path, fifo: Path, contract: Contract
) -> None:
    svc = _service(tmp_path, fifo, Policy(cap_epsilon=10, delta=1e-5))  # the default purposes
    reply = _call(lambda: svc.query(_request(contract)))
    assert reply.refusal.code == "budget-purpose" and "analytics" in reply.refusal.message


def test_a_query_that_would_overspend_is_refused_before_data_with_the_numbers(
    tmp_path: Path, fifo: Path, contract: Contract
) -> None:
    svc = _service(tmp_path, fifo, Policy(cap_epsilon=0.5, delta=1e-5, allowed_purposes=ANALYTICS))
    reply = _call(lambda: svc.query(_request(contract, noise_multiplier=2.0)))
    assert reply.refusal.code == "budget-cap", reply
    assert "remains" in reply.refusal.message and "difference" in reply.refusal.message
    ledger = Ledger(tmp_path / "state")
    assert ledger.status().events == 0
    assert ledger.refusals()[0]["purpose"] == "analytics"
    bad = _call(
        lambda: svc.query(
            _request(contract, filters=[{"field": "Contract", "values": ["Lifetime"]}])
        )
    )
    assert bad.refusal.code == "query-key"


def test_the_owners_analytics_cap_binds_apart_from_the_total_before_data(
    tmp_path: Path, fifo: Path, contract: Contract
) -> None:
    one = epsilon_of(3.0, 1e-5)
    policy = Policy(
        cap_epsilon=100,
        delta=1e-5,
        allowed_purposes=[*ANALYTICS, "analytics/drift"],
        purpose_caps={"analytics": 1.2 * one},
    )
    ledger = Ledger.initialize(tmp_path / "state", "dept-a", policy)
    ledger.reserve("1", "churn", "analytics/drift", [PlannedEvent(3.0, 1.0, 1, "analytics/drift")])
    ledger.record("1", 1, "analytics/drift", 3.0, 1.0, 1)  # a drift check counts as analytics
    ledger.close("1")
    training = [PlannedEvent(3.0, 1.0, 5, "training")]  # training is not under that cap
    assert ledger.reserve("2", "churn", "training", training) > one
    ledger.close("2")
    status = ledger.status().purposes
    assert [(p.purpose, p.cap_epsilon) for p in status] == [("analytics", 1.2 * one)]
    assert status[0].spent_epsilon == pytest.approx(one)
    ledger.close_db()
    svc = NodeService(node_config(tmp_path, fifo, contract=TELCO), seed=11)  # data: a FIFO
    reply = _call(lambda: svc.query(_request(contract, noise_multiplier=3.0)))
    assert reply.refusal.code == "budget-purpose-cap", reply
    message = reply.refusal.message
    assert "purpose 'analytics'" in message and f"{0.2 * one:.3f} of its cap" in message
    after = Ledger(tmp_path / "state")
    assert after.status().events == 1 and after.refusals()[-1]["code"] == "purpose-cap"
    assert after.refusals()[-1]["remaining_epsilon"] == pytest.approx(0.2 * one, rel=1e-6)


def test_the_owner_sets_and_sees_a_purpose_cap_with_atoll_budget(tmp_path: Path) -> None:
    from atoll.cli import app

    runner, state = CliRunner(), str(tmp_path / "state")
    base = ["--state-dir", state, "--cap", "8", "--purpose", "training", "--purpose", "analytics"]
    bad = runner.invoke(app, ["budget", "init", "--node-name", "n", *base, "--purpose-cap", "x"])
    assert bad.exit_code == 2 and "PURPOSE=EPSILON" in " ".join(bad.output.split())
    zero_cap = runner.invoke(
        app, ["budget", "init", "--node-name", "n", *base, "--purpose-cap", "analytics=0"]
    )
    assert zero_cap.exit_code == 2 and "--purpose-cap" in zero_cap.output
    assert not (tmp_path / "state" / "node-privacy.db").exists()
    made = runner.invoke(
        app, ["budget", "init", "--node-name", "n", *base, "--purpose-cap", "analytics=1.5"]
    )
    assert made.exit_code == 0, made.output
    changed = runner.invoke(app, ["budget", "policy", *base, "--purpose-cap", "analytics=0.75"])
    assert changed.exit_code == 0, changed.output
    ledger = Ledger(tmp_path / "state")
    assert ledger.policy().purpose_caps == {"analytics": 0.75}
    changes = [e for e in audit_entries(ledger.engine, "node:n") if e.action == "policy.changed"]
    assert [c.details["policy"]["purpose_caps"] for c in changes] == [
        {"analytics": 1.5},
        {"analytics": 0.75},
    ]
    ledger.close_db()
    shown = runner.invoke(app, ["budget", "show", "--state-dir", state])
    text = " ".join(shown.output.split())
    assert "purpose analytics: spent ε=0.000" in text and "cap 0.750" in text
    status = json.loads(
        runner.invoke(app, ["budget", "show", "--state-dir", state, "--json"]).stdout
    )
    assert status["purposes"] == [
        {
            "purpose": "analytics",
            "cap_epsilon": 0.75,
            "spent_epsilon": 0.0,
            "reserved_epsilon": 0.0,
            "remaining_epsilon": 0.75,
        }
    ]


def test_a_query_is_charged_as_one_gaussian_and_matches_an_independent_accountant(
    tmp_path: Path, silos: dict[str, Path], contract: Contract
) -> None:
    svc = _service(tmp_path, silos["silo-1"])
    reply = svc.query(_request(contract, noise_multiplier=3.0))
    assert reply.WhichOneof("outcome") == "answered", reply
    a = reply.answered
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.GaussianDpEvent(3.0))
    independent = acc.get_epsilon(1e-5)
    ledger = Ledger(tmp_path / "state")
    assert ledger.epsilon() == pytest.approx(independent, rel=0.01)
    assert a.epsilon == pytest.approx(ledger.epsilon()) == pytest.approx(epsilon_of(3.0, 1e-5))
    status = ledger.status()
    assert status.events == 1 and status.runs[0].status == "closed"
    assert status.runs[0].purpose == "analytics"
    assert a.noise_multiplier == 3.0 and a.sensitivity == pytest.approx(math.sqrt(2))
    assert [tuple(c.key) for c in a.cells] == [("DSL",), ("Fiber optic",), ("No",), (OTHER,)]
    assert all(list(c.noise_std) == pytest.approx([3 * math.sqrt(2)] * 2) for c in a.cells)
    actions = [e.action for e in audit_entries(ledger.engine, "node:dept-a")]
    i = actions.index("query.admitted")
    assert actions[i:] == ["query.admitted", "release.charged", "reply.sent"]
    again = svc.query(_request(contract))  # one query per run: no second answer on a reservation
    assert again.refusal.code == "query-run-reused"
    assert Ledger(tmp_path / "state").status().events == 1


def test_target_epsilon_is_calibrated_by_the_node(
    tmp_path: Path, silos: dict[str, Path], contract: Contract
) -> None:
    svc = _service(tmp_path, silos["silo-2"])
    reply = svc.query(_request(contract, noise_multiplier=0.0, epsilon=1.0))
    assert 0.99 <= reply.answered.epsilon <= 1.0
    assert reply.answered.noise_multiplier == pytest.approx(sigma_for_epsilon(1.0, 1e-5))


def test_the_canary_appears_in_no_answer_or_audit_entry(
    tmp_path: Path, silos: dict[str, Path], contract: Contract
) -> None:
    svc = _service(tmp_path, silos["silo-1"])  # month-to-month: holds rows 0 and 1
    replies = [
        svc.query(_request(contract, run=str(900 + i), **spec))
        for i, spec in enumerate(
            [
                CHARGES_BY_PAYMENT,
                {"kind": "histogram", "field": "PaymentMethod", "group_by": ["Contract"]},
                {
                    "kind": "count",
                    "group_by": ["PaymentMethod"],
                    "filters": [{"field": "PaymentMethod", "values": [OTHER]}],
                },
            ]
        )
    ]
    assert all(r.WhichOneof("outcome") == "answered" for r in replies), replies
    records = [wire.query_content(r) for r in replies]
    text = "".join(str(r) for r in replies) + "".join(repr(dict(r)) for r in records)
    assert CANARY not in text
    entries = audit_entries(Ledger(tmp_path / "state").engine, "node:dept-a")
    assert CANARY not in "".join(repr(e.details) + e.subject for e in entries)


# ================================================================================================
# Wire, coordinator store, accuracy preview, CLI
# ================================================================================================
def test_the_wire_round_trip_and_the_coordinator_check(
    tmp_path: Path, silos: dict[str, Path], contract: Contract
) -> None:
    q = Query.model_validate(
        {
            **CHARGES_BY_PAYMENT,
            "epsilon": 0.5,
            "filters": [{"field": "tenure", "low": 1, "high": 24}],
        }
    )
    spec = q.to_pb(contract.hash)
    content = RecordDict({wire.CONFIG: wire.query_record(spec)})
    assert wire.query_spec_of(content) == spec
    assert Query.from_pb(spec) == q
    garbled = RecordDict({wire.CONFIG: ConfigRecord({wire.QUERY_SPEC: "{not json"})})
    assert wire.query_spec_of(garbled) == pb.QuerySpec()  # refused by the node: no hash
    svc = _service(tmp_path, silos["silo-3"])
    reply = svc.query(pb.QueryRequest(caller=caller("77"), spec=spec))
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 77, 3, 1
    msg = Message(wire.query_content(reply), dst_node_id=3, message_type=wire.QUERY)
    got = wire.answered_of(msg)
    assert isinstance(got, pb.Answered) and got == reply.answered
    lay = layout(q, contract)
    assert check_answer(got, lay) is None
    got.cells[0].noise_std[0] = 0.001  # a node claiming less noise than its σ implies
    assert check_answer(got, lay) is not None


def test_results_are_stored_with_their_query_and_the_tables_match_the_migration(
    tmp_path: Path, contract: Contract, node_data: dict[str, NodeData]
) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import server.auth_models  # noqa: F401 - every coordinator table on Base.metadata
    import server.node_names  # noqa: F401
    from server.registry_models import Base

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    store = QueryStore(url)
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
    aq = _admit(CHURN_BY_INTERNET, contract)
    answers = {
        n: answered(aq, *answer(aq, field_table(d, contract), contract, zero), n)
        for n, d in node_data.items()
    }
    result = result_of(aq.query, aq.layout, answers)
    qid = store.add(
        run_id="5",
        kind="rate",
        status="answered",
        contract_name=contract.name,
        contract_hash=contract.hash,
        spec=aq.query.model_dump(mode="json"),
        nodes={n: {"status": "answered"} for n in answers},
        result=result,
    )
    row = store.get(qid)
    assert row is not None and row.result["participants"] == sorted(node_data)
    assert row.as_dict()["spec"]["kind"] == "rate" and store.by_run("5") is not None

    from atoll.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["query", "show", "--registry", url, "--id", str(qid)])
    assert shown.exit_code == 0, shown.output
    assert "Fiber optic" in shown.output
    out = tmp_path / "q.csv"
    exported = runner.invoke(
        app, ["query", "export", "--registry", url, "--id", str(qid), "--out", str(out)]
    )
    assert exported.exit_code == 0, exported.output
    table = pd.read_csv(out)
    assert list(table["statistic"]) == ["rate"] * 4 and "low" in table.columns
    as_json = runner.invoke(
        app, ["query", "export", "--registry", url, "--id", str(qid), "--format", "json"]
    )
    assert json.loads(as_json.stdout)["id"] == qid
    store.close()


def test_accuracy_is_known_before_spending(contract: Contract) -> None:
    q = Query.model_validate({"kind": "count", "group_by": ["Contract"], "noise_multiplier": 2.0})
    pre = expected_intervals(q, contract, nodes=3, sigma=2.0)
    assert pre["half_width"]["count"] == pytest.approx(1.959964 * math.sqrt(3) * 2.0)
    eps, sigma = epsilon_for_width(q, contract, nodes=3, half_width=10.0, delta=1e-5)
    assert expected_intervals(q, contract, nodes=3, sigma=sigma)["half_width"]["count"] == (
        pytest.approx(10.0)
    )
    assert eps == pytest.approx(epsilon_of(sigma, 1e-5))
    rate = Query.model_validate({**CHURN_BY_INTERNET, "epsilon": 1.0})
    eps_r, _ = epsilon_for_width(
        rate, contract, nodes=3, half_width=0.01, delta=1e-5, cell_size=1000
    )
    assert eps_r > 0
    runner = CliRunner()
    from atoll.cli import app

    res = runner.invoke(
        app,
        [
            "query",
            "preview",
            "--contract",
            str(TELCO),
            "--nodes",
            "3",
            "--spec",
            json.dumps({**CHURN_BY_INTERNET, "epsilon": 1.0}),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    preview = json.loads(res.stdout)
    assert preview["epsilon_per_node"] == 1.0 and "ratio_half_width" in preview
    res = runner.invoke(
        app,
        [
            "query",
            "preview",
            "--contract",
            str(TELCO),
            "--nodes",
            "3",
            "--spec",
            json.dumps({"kind": "count", "noise_multiplier": 1.0}),
            "--target-half-width",
            "10",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["for_target"]["epsilon_per_node"] == pytest.approx(eps, rel=1e-6)
