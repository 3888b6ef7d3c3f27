"""The synthetic generator is deterministic, matches its contract and carries real signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from client.data_source import read_records
from client.split import split_mask
from client.validation import validate
from common import synth
from common.contract import load_contract

CONTRACT = load_contract(Path(__file__).resolve().parents[1] / "contracts" / "synthetic.yaml")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synth.generate(8000, seed=11)


def test_same_seed_same_frame_other_seed_other_frame(frame: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(synth.generate(8000, seed=11), frame)
    other = synth.generate(8000, seed=12)
    assert not other["churned"].equals(frame["churned"])
    assert other[synth.ID_COLUMN].iloc[0] != frame[synth.ID_COLUMN].iloc[0]
    assert len(synth.generate(0)) == 0


def test_columns_match_the_contract(frame: pd.DataFrame) -> None:
    assert CONTRACT.id == synth.ID_COLUMN and CONTRACT.label.column == synth.LABEL_COLUMN
    assert CONTRACT.drop == [synth.DEPARTMENT_COLUMN]
    assert set(frame.columns) == set(CONTRACT.required_columns) | {synth.DEPARTMENT_COLUMN}
    assert frame[synth.ID_COLUMN].is_unique


def test_departments_differ_in_size_and_churn_rate(frame: pd.DataFrame) -> None:
    assert sorted(frame["department"].unique()) == synth.department_names(4)
    rates = frame.groupby("department")["churned"].apply(lambda s: (s == "yes").mean())
    sizes = frame["department"].value_counts()
    assert rates.max() - rates.min() > 0.15
    assert sizes.max() > 1.5 * sizes.min()
    six = synth.generate(3000, seed=0, departments=6)
    assert six["department"].nunique() == 6


def test_validates_with_a_few_planted_and_counted_issues(frame: pd.DataFrame) -> None:
    r = validate(frame, CONTRACT).report
    assert r.rows_accepted / r.rows_read > 0.99
    assert set(r.rejected_by_reason) == {"days_since_last_login:missing"}
    assert 0 < r.rejected_by_reason["days_since_last_login:missing"] < 0.01 * len(frame)
    assert r.values_clipped.get("support_tickets", 0) > 0
    assert set(r.unknown_categories) == {"channel"}
    assert 0 < r.missing_rate["monthly_spend"] < 0.02 and 0 < r.missing_rate["region"] < 0.02
    assert r.extra_columns == 0 and r.duplicate_ids == 0 and r.warnings == []
    assert 0.1 < r.positives / r.rows_accepted < 0.3


def test_clean_variant_has_no_issues() -> None:
    r = validate(synth.generate(3000, seed=1, dirty=False), CONTRACT).report
    assert r.rows_rejected == 0 and r.unknown_categories == {}
    assert all(rate == 0 for rate in r.missing_rate.values())


def test_csv_round_trip_encodes_identically(frame: pd.DataFrame, tmp_path: Path) -> None:
    path = synth.write_csv(tmp_path / "s.csv", 8000, seed=11, departments=4)
    from_csv = validate(read_records(path), CONTRACT)
    direct = validate(frame, CONTRACT)
    assert from_csv.report == direct.report
    assert np.array_equal(from_csv.ids, direct.ids)
    np.testing.assert_allclose(from_csv.x, direct.x, atol=1e-6)


def test_logistic_regression_finds_the_signal(frame: pd.DataFrame) -> None:
    data = validate(frame, CONTRACT)
    is_test = split_mask(data.ids)
    model = LogisticRegression(max_iter=1000).fit(data.x[~is_test], data.y[~is_test])
    auc = roc_auc_score(data.y[is_test], model.predict_proba(data.x[is_test])[:, 1])
    assert auc > 0.7


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="departments"):
        synth.generate(10, departments=0)
    with pytest.raises(ValueError, match="n_rows"):
        synth.generate(-1)
