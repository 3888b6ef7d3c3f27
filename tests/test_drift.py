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
from common.analytics_math import Query
from common.contract import Contract, load_contract
from privacy.dp import epsilon
from server.drift import (
    DriftError,
    DriftStore,
    drift_report,
    feature_queries,
    psi,
    record_reference,
    run_check,
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
