"""Drift checks: DP reference histograms at publish, the same histograms on current data, PSI.

Telco split by `Contract` into three silos; every histogram is answered by the nodes' own code
with the noise injected (a seeded generator, so the test is deterministic) at the noise the
check's ε implies, and summed by the coordinator's code. One node's `MonthlyCharges` rises by
30%: that feature — and no other — must be flagged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers.analytics import answer_in_process, split_csv
from helpers.node import ROOT
from typer.testing import CliRunner

from client.analytics_data import FieldTable, field_table
from client.node import load_node_data
from client.runtime.drift import plan_reference, release_reference
from common.analytics_math import Query, epsilon_of
from common.contract import Contract, load_contract
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from common.run_config import RunConfig
from privacy.dp import epsilon
from server.drift import (
    DriftError,
    DriftStore,
    drift_report,
    feature_queries,
    pool_finish_references,
    psi,
    record_reference,
    run_check,
    store_finish_reference,
    summary,
)

pytestmark = pytest.mark.analytics

TELCO = ROOT / "contracts" / "telco_churn.yaml"


@pytest.fixture(scope="module")
def contract() -> Contract:
    return load_contract(TELCO)


@pytest.fixture(scope="module")
def silos(telco_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    frame = pd.read_csv(telco_csv, dtype=str, keep_default_na=False)
    return split_csv(frame, "Contract", tmp_path_factory.mktemp("silos"))


def _tables(paths: dict[str, Path], contract: Contract) -> dict[str, FieldTable]:
    return {n: field_table(load_node_data(str(p), contract), contract) for n, p in paths.items()}


@pytest.fixture(scope="module")
def before(silos: dict[str, Path], contract: Contract) -> dict[str, FieldTable]:
    return _tables(silos, contract)


@pytest.fixture(scope="module")
def after(
    silos: dict[str, Path], contract: Contract, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, FieldTable]:
    """The same silos, but silo-2 (one-year contracts) now charges 30% more a month."""
    out = tmp_path_factory.mktemp("shifted")
    frame = pd.read_csv(silos["silo-2"], dtype=str, keep_default_na=False)
    frame["MonthlyCharges"] = (frame["MonthlyCharges"].astype(float) * 1.3).round(2).astype(str)
    frame.to_csv(out / "silo-2.csv", index=False)
    return _tables({**silos, "silo-2": out / "silo-2.csv"}, contract)


def _asker(tables: dict[str, FieldTable], contract: Contract, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    asked: list[Query] = []

    def ask(_feature: str, query: Query) -> dict[str, Any]:
        asked.append(query)
        return answer_in_process(query, contract, tables, rng.standard_normal, qid=len(asked))

    ask.asked = asked  # type: ignore[attr-defined]
    return ask


def test_one_shifted_feature_and_no_other_is_flagged(
    tmp_path: Path,
    contract: Contract,
    before: dict[str, FieldTable],
    after: dict[str, FieldTable],
) -> None:
    store = DriftStore(f"sqlite:///{tmp_path / 'registry.db'}")
    model = ("telco-churn", 3)
    with pytest.raises(DriftError, match="no reference histograms"):
        run_check(store, model=model, contract=contract, ask=_asker(before, contract, 1))
    ref_ask = _asker(before, contract, 1)
    record_reference(store, model=model, contract=contract, ask=ref_ask, epsilon=1.0, delta=1e-5)
    features = [f.name for f in contract.features]
    assert [q.field for q in ref_ask.asked] == features  # one DP histogram per feature
    # the whole reference spends ε = 1 per node: F Gaussian releases compose to one
    sigma = ref_ask.asked[0].noise_multiplier
    assert epsilon([(sigma, 1.0, 1)] * len(features), 1e-5) == pytest.approx(1.0, rel=0.01)

    unchanged_id, unchanged = run_check(
        store, model=model, contract=contract, ask=_asker(before, contract, 2)
    )
    assert unchanged["flagged"] == []  # the same data: any PSI is noise, and is not flagged
    cid, report = run_check(store, model=model, contract=contract, ask=_asker(after, contract, 3))
    assert report["flagged"] == ["MonthlyCharges"]
    charges = report["features"]["MonthlyCharges"]
    assert charges["psi_low"] > charges["threshold"]  # beyond the noise, with its uncertainty
    assert charges["psi_low"] <= charges["psi"] <= charges["psi_high"]
    others = [f for n, f in report["features"].items() if n != "MonthlyCharges"]
    assert max(f["psi"] for f in others) < min(f["threshold"] for f in others) * 10
    assert all(not f["flagged"] for f in others)
    last = store.latest(model[0], model[1], "check")
    assert last is not None and last.id == cid > unchanged_id
    card = summary(last)
    assert card is not None and card["flagged"] == ["MonthlyCharges"]
    assert set(card["psi"]) == set(features)
    store.close()


def _finish_references(
    tables: dict[str, FieldTable], contract: Contract, sigma: float, bins: int, seed: int
) -> dict[str, pb.Finished]:
    """Each node's finish reply as its runtime builds it (client.runtime.drift, noise seeded)."""
    plan = plan_reference(contract, noise_multiplier=sigma, bins=bins, max_bins=100)
    rng = np.random.default_rng(seed)
    return {
        name: pb.Finished(
            node_name=name,
            drift_reference=release_reference(plan, table, contract, rng.standard_normal),
            drift_reference_noise=plan.per_feature_noise,
            budget=pb.Budget(delta=1e-5),
        )
        for name, table in tables.items()
    }


def test_the_reference_released_on_finish_at_the_default_noise_catches_the_shift(
    tmp_path: Path,
    contract: Contract,
    before: dict[str, FieldTable],
    after: dict[str, FieldTable],
) -> None:
    """The run that trains a model leaves its reference (run-config defaults σ and bins): the
    ServerApp pools the nodes' finish replies; a later check flags the shifted feature only.
    A node whose reply does not fit the layout is left out, with the reason."""
    sigma, bins = RunConfig.default("drift-reference-noise"), RunConfig.default("drift-bins")
    finished = _finish_references(before, contract, sigma, bins, seed=7)
    finished["silo-x"] = pb.Finished(node_name="silo-x", drift_reference=[1.0, 2.0])
    histograms, problems = pool_finish_references(
        contract, noise_multiplier=sigma, bins=bins, delta=1e-5, finished=finished
    )
    assert list(problems) == ["silo-x"] and "layout" in problems["silo-x"]
    assert list(histograms) == [f.name for f in contract.features]
    charges = histograms["MonthlyCharges"]
    assert charges["participants"] == sorted(before)
    per_node = sigma * len(contract.features) ** 0.5  # each feature at σ·√F on every node
    assert charges["std"] == pytest.approx([per_node * len(before) ** 0.5] * bins)
    truth = sum(np.histogram(t.numeric["MonthlyCharges"], bins=bins, range=(
        contract.feature("MonthlyCharges").min, contract.feature("MonthlyCharges").max  # type: ignore[union-attr]
    ))[0] for t in before.values())  # fmt: skip
    assert np.abs(np.array(charges["counts"]) - truth).max() < 5 * charges["std"][0]
    # each node's ε for the whole reference: one Gaussian at σ
    assert charges["epsilon_per_node"]["silo-1"] == pytest.approx(epsilon_of(sigma, 1e-5))

    store = DriftStore(f"sqlite:///{tmp_path / 'registry.db'}")
    model = ("telco-churn", 1)
    store_finish_reference(
        store,
        model=model,
        contract=contract,
        histograms=histograms,
        noise_multiplier=sigma,
        bins=bins,
        delta=1e-5,
    )
    check = {"store": store, "model": model, "contract": contract, "epsilon": 1.0}
    _, same = run_check(**check, ask=_asker(before, contract, 8))  # type: ignore[arg-type]
    assert same["flagged"] == []
    _, report = run_check(**check, ask=_asker(after, contract, 9))  # type: ignore[arg-type]
    assert report["flagged"] == ["MonthlyCharges"]
    # the check spent its own ε = 1 per node over all features (F releases compose to one)
    asked = _asker(after, contract, 10)
    run_check(**check, ask=asked)  # type: ignore[arg-type]
    sigma_check = asked.asked[0].noise_multiplier  # type: ignore[attr-defined]
    assert epsilon_of(sigma_check / len(contract.features) ** 0.5, 1e-5) == pytest.approx(1, 0.01)
    store.close()


def test_psi_and_the_no_drift_threshold_follow_the_noise() -> None:
    ref = np.array([500.0, 300.0, 200.0])
    assert float(psi(ref, ref)) == pytest.approx(0.0)
    assert float(psi(ref, ref[::-1])) > 0.3  # a large move
    hist = {"labels": ["a", "b", "c"], "counts": ref.tolist(), "std": [1.0] * 3}
    loud = {**hist, "std": [200.0] * 3}
    moved = {**hist, "counts": [400.0, 330.0, 270.0]}
    quiet = drift_report({"x": hist}, {"x": moved}, seed=1)
    noisy = drift_report({"x": loud}, {"x": {**moved, "std": [200.0] * 3}}, seed=1)
    q, n = quiet["features"]["x"], noisy["features"]["x"]
    assert n["psi"] < q["psi"]  # the same noisy counts weigh less when the noise is loud ...
    assert n["threshold"] > 5 * q["threshold"]  # ... and are within what noise alone reaches
    assert q["flagged"] and not n["flagged"]
    assert n["psi_high"] - n["psi_low"] > q["psi_high"] - q["psi_low"]


def test_feature_queries_fit_the_contract_and_the_cli_shows_the_last_check(
    tmp_path: Path, contract: Contract
) -> None:
    queries = feature_queries(contract, epsilon=0.5, delta=1e-5, bins=8)
    assert queries["MonthlyCharges"].bins == 8 and queries["Contract"].bins == 0
    assert {q.kind for q in queries.values()} == {"histogram"}

    from atoll.cli import app

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    missing = CliRunner().invoke(app, ["drift", "show", "nope", "--registry", url])
    assert missing.exit_code == 2 and "nope" in missing.output
    assert "Traceback" not in missing.output
