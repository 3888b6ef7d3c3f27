"""Validation: schema first, rows rejected and counted by reason, and no value ever leaks."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from client.data_source import DataSourceError, ensure_id, read_records
from client.validation import (
    NoUsableRowsError,
    QualityReport,
    SchemaMismatchError,
    validate,
)
from common.contract import load_contract, parse_contract
from common.encoding import Encoder

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts"


@pytest.fixture(scope="module")
def telco_contract():
    return load_contract(CONTRACTS / "telco_churn.yaml")


@pytest.fixture(scope="module")
def small_contract():
    return parse_contract(
        {
            "name": "small",
            "version": 1,
            "task": "churn",
            "label": {"column": "churn", "positive": "Yes"},
            "id": "cid",
            "drop": ["email"],
            "features": [
                {"name": "age", "type": "numeric", "min": 18, "max": 90},
                {"name": "plan", "type": "categorical", "vocabulary": ["basic", "pro"]},
                {"name": "autopay", "type": "binary", "true_values": ["y"], "false_values": ["n"]},
            ],
        }
    )


def small_frame(n: int = 6, **columns: list[str]) -> pd.DataFrame:
    data = {
        "cid": [f"c{i}" for i in range(n)],
        "email": [f"person{i}@example.com" for i in range(n)],
        "age": [str(20 + i) for i in range(n)],
        "plan": ["basic", "pro"] * (n // 2) + ["basic"] * (n % 2),
        "autopay": ["y", "n"] * (n // 2) + ["y"] * (n % 2),
        "churn": ["Yes", "No", "No"] * (n // 3) + ["No"] * (n % 3),
    }
    data.update(columns)
    return pd.DataFrame(data, dtype=object)


def test_real_telco_validates_completely(telco_csv: Path, telco_contract) -> None:
    data = validate(read_records(telco_csv), telco_contract)
    r = data.report
    assert (r.rows_read, r.rows_accepted, r.rows_rejected) == (7043, 7043, 0)
    assert r.rejected_by_reason == {} and r.duplicate_ids == 0
    assert r.extra_columns == 0  # gender is dropped, not "extra"
    assert round(r.missing_rate["TotalCharges"] * 7043) == 11  # blanks imputed, not rejected
    assert r.values_clipped == {} and r.unknown_categories == {}
    assert r.positives == 1869 and r.label_values == 2 and r.warnings == []
    assert r.contract_hash == telco_contract.hash
    assert data.x.shape == (7043, Encoder(telco_contract).n_features)
    assert data.x.dtype == np.float32 and data.x.min() >= 0 and data.x.max() <= 1
    assert data.y is not None and data.y.sum() == 1869
    assert len(set(data.ids)) == 7043 and data.ids[0] == "7590-VHVEG"
    assert data.rows.tolist() == list(range(7043))


def test_real_bank_needs_an_id_and_then_validates(bank_csv: Path) -> None:
    contract = load_contract(CONTRACTS / "bank_propensity.yaml")
    frame = read_records(bank_csv)
    with pytest.raises(SchemaMismatchError, match=r"\['customer_id'\].*id-from-row"):
        validate(frame, contract)
    data = validate(ensure_id(frame, contract.id), contract)
    r = data.report
    assert r.rows_accepted == 45211 and r.positives == 5289
    assert set(r.values_clipped) == {"balance", "campaign", "previous"}
    assert r.values_clipped["campaign"] == 244
    assert data.x.shape[0] == 45211


def test_schema_mismatch_names_columns_contract_and_what_to_do(small_contract) -> None:
    frame = small_frame().drop(columns=["age"]).rename(columns={"plan": "PLAN"})
    with pytest.raises(SchemaMismatchError) as info:
        validate(frame, small_contract)
    msg = str(info.value)
    assert "missing required column(s) ['age', 'plan']" in msg
    assert "contract 'small' v1" in msg and small_contract.hash[:12] in msg
    assert "'PLAN' -> 'plan'" in msg and "What to do" in msg
    with pytest.raises(SchemaMismatchError, match=r"repeats column names \['age'\]"):
        validate(pd.concat([small_frame(), small_frame()[["age"]]], axis=1), small_contract)


def test_label_is_optional_for_scoring(small_contract) -> None:
    frame = small_frame().drop(columns=["churn"])
    with pytest.raises(SchemaMismatchError, match="require_label=False"):
        validate(frame, small_contract)
    data = validate(frame, small_contract, require_label=False)
    assert data.y is None and data.report.rows_accepted == 6 and data.report.positives == 0


def test_extra_and_drop_columns(small_contract) -> None:
    frame = small_frame(notes=["x"] * 6, region=["n"] * 6)
    r = validate(frame, small_contract).report
    assert r.extra_columns == 2  # notes, region; email is dropped, not extra
    assert validate(small_frame().drop(columns=["email"]), small_contract).report.extra_columns == 0


def test_duplicate_and_missing_ids(small_contract) -> None:
    frame = small_frame(cid=["a", "b", "a", "", " ", "a"], age=["30", "31", "32", "33", "34", "35"])
    data = validate(frame, small_contract)
    r = data.report
    assert r.duplicate_ids == 2 and r.rejected_by_reason["id:duplicate"] == 2
    assert r.rejected_by_reason["id:missing"] == 2
    assert data.ids.tolist() == ["a", "b"] and data.rows.tolist() == [0, 1]  # first one kept
    assert r.rows_accepted + r.rows_rejected == r.rows_read == 6


def test_labels_missing_miscased_and_unexpected_values(small_contract) -> None:
    frame = small_frame(churn=["Yes", "No", "", "yes", "Maybe", " Yes "])
    data = validate(frame, small_contract)
    r = data.report
    assert r.rejected_by_reason == {"label:missing": 1, "label:case_mismatch": 1}
    assert data.y.tolist() == [1, 0, 0, 1]  # "Maybe" is negative, " Yes " is positive
    assert r.positives == 2 and r.label_values == 4
    assert len(r.warnings) == 1 and "4 distinct values" in r.warnings[0]
    no_pos = validate(small_frame(churn=["No"] * 6), small_contract).report
    assert any("positive value" in w for w in no_pos.warnings)


def test_feature_rejections_and_counts_reach_the_report(small_contract) -> None:
    frame = small_frame(
        age=["200", "abc", "", "40", "50", "10"],
        plan=["basic", "gold", "pro", "", "pro", "basic"],
        autopay=["y", "n", "y", "y", "maybe", "n"],
    )
    data = validate(frame, small_contract)
    r = data.report
    assert r.rejected_by_reason == {
        "age:not_a_number": 1,
        "age:missing": 1,
        "autopay:not_binary": 1,
    }
    assert r.values_clipped == {"age": 2} and r.unknown_categories == {"plan": 1}
    assert r.missing_rate["age"] == pytest.approx(1 / 6)
    assert r.missing_rate["plan"] == pytest.approx(1 / 6)
    assert data.ids.tolist() == ["c0", "c3", "c5"] and data.x.shape == (3, 5)
    np.testing.assert_array_equal(data.x[0], Encoder(small_contract).encode(frame.iloc[[0]]).x[0])


def test_validation_is_independent_of_row_order(small_contract) -> None:
    frame = small_frame(30)
    shuffled = frame.sample(frac=1.0, random_state=3)
    a, b = validate(frame, small_contract), validate(shuffled, small_contract)
    by_id = {i: (x, y) for i, x, y in zip(a.ids, a.x, a.y, strict=True)}
    for i, x, y in zip(b.ids, b.x, b.y, strict=True):
        np.testing.assert_array_equal(x, by_id[i][0])
        assert y == by_id[i][1]
    assert a.report == b.report


def test_no_usable_rows_reports_counts_by_reason(small_contract) -> None:
    frame = small_frame(age=["x"] * 6, churn=[""] * 3 + ["No"] * 3)
    with pytest.raises(NoUsableRowsError) as info:
        validate(frame, small_contract)
    msg = str(info.value)
    assert "6 read, 0 accepted" in msg and "age:not_a_number: 6" in msg
    assert "label:missing: 3" in msg
    assert info.value.report.rows_rejected == 6
    with pytest.raises(NoUsableRowsError, match="0 read"):
        validate(small_frame().iloc[:0], small_contract)


def test_metrics_are_flat_numbers_for_flower(small_contract) -> None:
    frame = small_frame(age=["200", "abc", "30", "40", "50", "60"], plan=["gold"] + ["pro"] * 5)
    metrics = validate(frame, small_contract).report.to_metrics()
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in metrics.items())
    assert metrics["dq.rows-read"] == 6 and metrics["dq.rows-accepted"] == 5
    assert metrics["dq.rejected.age:not_a_number"] == 1
    assert metrics["dq.clipped.age"] == 1 and metrics["dq.unknown.plan"] == 1
    assert "dq.missing-rate.age" not in metrics  # zero entries are left out
    assert (
        QualityReport.model_validate_json(
            validate(frame, small_contract).report.model_dump_json()
        ).to_metrics()
        == metrics
    )


CANARY = "CANARY-7f3a9e"


def test_canary_value_never_leaves_through_errors_or_reports(
    small_contract, tmp_path: Path
) -> None:
    """Plant one unique string everywhere a value can be, trigger every kind of error."""
    leaks: list[str] = []

    def collect(exc: BaseException) -> None:
        leaks.extend([str(exc), repr(exc), repr(exc.args)])

    planted = small_frame(
        8,
        cid=[CANARY, CANARY, "c2", "", "c4", f"{CANARY}-x", "c6", "c7"],
        email=[CANARY] * 8,
        notes=[CANARY] * 8,
        age=[CANARY, "30", "1e999", "40", "nan", CANARY, "-5", "300"],
        plan=[CANARY, "pro", "basic", CANARY, "pro", "basic", CANARY, "pro"],
        autopay=["y", CANARY, "n", "y", "y", "n", CANARY, "y"],
        churn=[CANARY, "Yes", "", "No", "yes", "No", CANARY.lower(), "Yes"],
    )
    reports = [validate(planted, small_contract).report]
    assert reports[0].rows_accepted > 0 and reports[0].rejected_by_reason  # errors did happen

    with pytest.raises(NoUsableRowsError) as no_rows:
        validate(planted.assign(age=CANARY), small_contract)
    collect(no_rows.value)
    reports.append(no_rows.value.report)
    with pytest.raises(SchemaMismatchError) as schema:
        validate(planted.drop(columns=["plan"]), small_contract)
    collect(schema.value)
    with pytest.raises(SchemaMismatchError) as repeated:
        validate(pd.concat([planted, planted[["age"]]], axis=1), small_contract)
    collect(repeated.value)
    strict = validate(planted, small_contract, strict_categories=True).report
    reports.append(strict)

    csv_cases = {
        "ragged.csv": f"cid,age\n{CANARY},1\n{CANARY},2,{CANARY}\n",
        "short.csv": f"cid,age\n{CANARY}\n",
        "quote.csv": f'cid,age\n"{CANARY},1\n',
    }
    for name, text in csv_cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataSourceError) as bad:
            read_records(tmp_path / name)
        collect(bad.value)
    (tmp_path / "latin.csv").write_bytes(f"cid\n{CANARY}\xe9\n".encode("latin-1"))
    with pytest.raises(DataSourceError) as latin:
        read_records(tmp_path / "latin.csv")
    collect(latin.value)
    (tmp_path / "bad.parquet").write_text(CANARY)
    with pytest.raises(DataSourceError) as pq:
        read_records(tmp_path / "bad.parquet")
    collect(pq.value)

    db = tmp_path / "c.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (cid TEXT UNIQUE)")
        conn.execute("INSERT INTO t VALUES (?)", (CANARY,))
    for query in (
        f"SELECT CAST('{CANARY}' AS INTEGER) + nosuchcolumn FROM t",
        f"INSERT INTO t VALUES ('{CANARY}')",  # UNIQUE constraint error quoting the statement
        f"SELECT * FROM {CANARY}",
    ):
        with pytest.raises(DataSourceError) as sql:
            read_records(f"sqlite:///{db}", query=query)
        collect(sql.value)

    leaks.extend(r.model_dump_json() for r in reports)
    leaks.extend(json.dumps(r.to_metrics()) for r in reports)
    leaks.extend(str(r) for r in reports)
    for text in leaks:
        assert CANARY not in text and CANARY.lower() not in text, text
