"""CSV (both separators), Parquet and SQL sources come back as text; bad sources fail clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from client.data_source import DataSourceError, ensure_id, read_records


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def assert_all_text(frame: pd.DataFrame) -> None:
    for name in frame.columns:
        assert all(isinstance(v, str) for v in frame[name]), name


def test_comma_csv_with_quotes_blanks_and_na_like_text(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.csv",
        "id,method,amount,note\n"
        '007,"Bank transfer, automatic",29.85,NA\n'
        '008,"He said ""hi""", ,null\n'
        "\n"
        "009,Mailed check,,\n",
    )
    frame = read_records(path)
    assert list(frame.columns) == ["id", "method", "amount", "note"]
    assert_all_text(frame)
    assert frame["id"].tolist() == ["007", "008", "009"]  # leading zeros kept
    assert frame["method"].tolist() == ["Bank transfer, automatic", 'He said "hi"', "Mailed check"]
    assert frame["amount"].tolist() == ["29.85", " ", ""]  # the encoder decides what is missing
    assert frame["note"].tolist() == ["NA", "null", ""]  # not turned into NaN


def test_semicolon_csv_with_quoted_header_like_bank_full(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.csv",
        '"age";"job";"balance";"y"\n58;"management";2143;"no"\n44;"a;b";-29;"yes"\n',
    )
    frame = read_records(str(path))
    assert list(frame.columns) == ["age", "job", "balance", "y"]
    assert frame.to_dict("list") == {
        "age": ["58", "44"],
        "job": ["management", "a;b"],
        "balance": ["2143", "-29"],
        "y": ["no", "yes"],
    }


def test_bom_and_crlf_are_handled(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.csv", "\ufeffa;b\r\n1;2\r\n")
    assert read_records(path).to_dict("list") == {"a": ["1"], "b": ["2"]}


def test_header_only_csv_gives_an_empty_frame_with_columns(tmp_path: Path) -> None:
    frame = read_records(write(tmp_path / "h.csv", "a,b\n"))
    assert list(frame.columns) == ["a", "b"] and len(frame) == 0


def test_real_files_are_read_whole(telco_csv: Path, bank_csv: Path) -> None:
    telco = read_records(telco_csv)
    assert telco.shape == (7043, 21)
    assert (telco["TotalCharges"].str.strip() == "").sum() == 11
    assert_all_text(telco.head(50))
    bank = read_records(bank_csv)
    assert bank.shape == (45211, 17)
    assert bank.loc[0, "job"] == "management" and bank.loc[0, "pdays"] == "-1"
    assert (bank["y"] == "yes").sum() == 5289


def test_parquet_values_become_csv_like_text(tmp_path: Path) -> None:
    source = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "count": pd.array([1, None, 3], dtype="Int64"),
            "widened": [1.0, np.nan, 3.0],  # an int column widened to float by a NULL
            "price": [29.85, 0.1, -1.5],
            "flag": [True, False, True],
            "text": ["x", None, ""],
        }
    )
    path = tmp_path / "d.parquet"
    source.to_parquet(path)
    frame = read_records(path)
    assert_all_text(frame)
    assert frame.to_dict("list") == {
        "id": ["a", "b", "c"],
        "count": ["1", "", "3"],
        "widened": ["1", "", "3"],
        "price": ["29.85", "0.1", "-1.5"],
        "flag": ["true", "false", "true"],
        "text": ["x", "", ""],
    }
    source.to_parquet(tmp_path / "d.pq")
    assert read_records(tmp_path / "d.pq").equals(frame)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'nodes.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (id TEXT, tenure INTEGER, spend REAL, y TEXT)")
        conn.exec_driver_sql(
            "INSERT INTO customers VALUES ('c1', 3, 29.85, 'Yes'), ('c2', NULL, 10.0, 'No'), "
            "('c3', 70, NULL, 'a:b')"
        )
    engine.dispose()
    return url


def test_sqlite_table(sqlite_db: str) -> None:
    frame = read_records(sqlite_db, table="customers")
    assert_all_text(frame)
    assert frame.to_dict("list") == {
        "id": ["c1", "c2", "c3"],
        "tenure": ["3", "", "70"],
        "spend": ["29.85", "10", ""],
        "y": ["Yes", "No", "a:b"],
    }


def test_sqlite_query_is_run_verbatim(sqlite_db: str) -> None:
    frame = read_records(
        sqlite_db, query="SELECT id, y FROM customers WHERE y <> 'a:b' ORDER BY id"
    )
    assert frame.to_dict("list") == {"id": ["c1", "c2"], "y": ["Yes", "No"]}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "is empty"),
        ("\n\n  \n", "is empty"),
        ("a,b,c\n1,2,3\n4,5\n", "line 3: 2 fields where the header has 3"),
        ("a,b\n1,2\n3,4,5\n", "line 3: 3 fields"),
        ('a,b\n1,"2\n3,4\n', "malformed near line"),
        ("a,b,a\n1,2,3\n", r"repeats column names \['a'\]"),
        ("a,,c\n1,2,3\n", "empty column name"),
    ],
)
def test_malformed_csv_files(tmp_path: Path, content: str, match: str) -> None:
    with pytest.raises(DataSourceError, match=match):
        read_records(write(tmp_path / "bad.csv", content))


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="does not exist"):
        read_records(tmp_path / "absent.csv")
    with pytest.raises(DataSourceError, match="not a file"):
        read_records(tmp_path)
    with pytest.raises(DataSourceError, match="unknown extension '.xlsx'.*sqlite"):
        read_records(write(tmp_path / "d.xlsx", "a,b\n"))
    with pytest.raises(DataSourceError, match="not UTF-8"):
        read_records(write(tmp_path / "latin.csv", "a,b\ncafé,1\n", encoding="latin-1"))
    with pytest.raises(DataSourceError, match="not a readable Parquet file"):
        read_records(write(tmp_path / "fake.parquet", "a,b\n1,2\n"))
    with pytest.raises(DataSourceError, match="only apply to a SQL URL"):
        read_records(write(tmp_path / "ok.csv", "a\n1\n"), table="t")


def test_sql_errors_name_the_table_but_not_the_query_or_password(
    sqlite_db: str, tmp_path: Path
) -> None:
    with pytest.raises(DataSourceError, match="table 'nope' does not exist"):
        read_records(sqlite_db, table="nope")
    with pytest.raises(DataSourceError, match=r"OperationalError") as info:
        read_records(sqlite_db, query="SELEC id FROM customers WHERE id = 'c1-secret'")
    assert "c1-secret" not in str(info.value) and "SELEC" not in str(info.value)
    with pytest.raises(DataSourceError, match="exactly one of 'table' or 'query'"):
        read_records(sqlite_db)
    with pytest.raises(DataSourceError, match="exactly one"):
        read_records(sqlite_db, table="customers", query="SELECT 1")
    with pytest.raises(DataSourceError, match="database file .* does not exist"):
        read_records(f"sqlite:///{tmp_path / 'absent.db'}", table="customers")
    assert not (tmp_path / "absent.db").exists()  # and it was not created as a side effect
    with pytest.raises(DataSourceError, match="not a valid SQLAlchemy URL"):
        read_records("not a url://", table="t")
    with pytest.raises(DataSourceError) as info:
        read_records("nosuchdialect://user:hunter2@localhost/db", table="t")
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_ensure_id_adds_stable_row_ids_only_when_absent() -> None:
    frame = pd.DataFrame({"a": ["x", "y", "z"]}, index=[10, 5, 7])
    with_ids = ensure_id(frame, "customer_id")
    assert list(with_ids.columns) == ["customer_id", "a"]
    assert with_ids["customer_id"].tolist() == ["row-000000000", "row-000000001", "row-000000002"]
    assert "customer_id" not in frame.columns  # input untouched
    assert ensure_id(frame, "customer_id").equals(with_ids)  # deterministic
    assert ensure_id(frame, "customer_id", prefix="b1-")["customer_id"].iloc[0] == "b1-000000000"
    assert ensure_id(with_ids, "customer_id") is with_ids  # an existing id is never replaced
