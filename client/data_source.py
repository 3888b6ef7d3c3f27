"""Read a node's records from a CSV file, a Parquet file or a SQL database — as text.

Every value comes back as a string ("" for missing), so that the contract's encoder alone decides
how a value is parsed, identically on every node whatever the storage format. Errors name the
source, what went wrong and what to do; they never contain a row's values.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from pathlib import Path

import pandas as pd

from common.errors import AtollError

CSV_SUFFIXES = (".csv", ".txt", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
_DELIMITERS = ",;\t|"


class DataSourceError(AtollError, ValueError):
    """A data source cannot be read; the message says which, why and what to do."""


def read_records(
    source: str | Path, *, table: str | None = None, query: str | None = None
) -> pd.DataFrame:
    """All records of `source` (CSV/Parquet path or SQLAlchemy URL) with every value as text."""
    source = str(source)
    if "://" in source:
        return _read_sql(source, table=table, query=query)
    if table is not None or query is not None:
        raise DataSourceError(
            f"data source '{source}' is a file: 'table' and 'query' only apply to a SQL URL"
        )
    path = Path(source)
    if not path.exists():
        raise DataSourceError(
            f"data source '{path}' does not exist: check the path in the node config"
        )
    if not path.is_file():
        raise DataSourceError(f"data source '{path}' is not a file")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return _read_csv(path)
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path)
    known = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
    raise DataSourceError(
        f"data source '{path}' has an unknown extension '{suffix}': use one of {known}, "
        "or a SQLAlchemy URL such as sqlite:///customers.db"
    )


def ensure_id(frame: pd.DataFrame, id_column: str, *, prefix: str = "row-") -> pd.DataFrame:
    """`frame` with row-number ids (`prefix` + zero-padded position) if `id_column` is absent.

    Only for data without a customer id (e.g. bank-full.csv) and only when the node config opts
    in (`id-from-row`): the caller decides. Such ids are stable only while the source keeps its
    row order, and the train/test split hashes them. An existing id column is never replaced.
    """
    if id_column in frame.columns:
        return frame
    width = max(len(str(len(frame))), 9)
    ids = [f"{prefix}{i:0{width}d}" for i in range(len(frame))]
    out = frame.copy()
    out.insert(0, id_column, pd.Series(ids, index=frame.index, dtype=object))
    return out


# ---- CSV ----------------------------------------------------------------------------------------


def _read_csv(path: Path) -> pd.DataFrame:
    """Strict CSV: a ragged row or broken quoting is an error, never silently padded or shifted."""
    stopped_at = 0  # the reader's line when an error cuts it short
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            header_line = fh.readline()
            if not header_line.strip():
                raise DataSourceError(
                    f"data source '{path}' is empty: expected a header line with column names"
                )
            delimiter = _sniff_delimiter(header_line)
            fh.seek(0)
            reader = csv.reader(
                fh, delimiter=delimiter, quotechar='"', doublequote=True, strict=True
            )
            header = [h.strip() for h in next(reader)]
            stopped_at = reader.line_num
            _check_header(path, header)
            rows: list[list[str]] = []
            for row in reader:
                stopped_at = reader.line_num
                if not row:
                    continue  # blank line
                if len(row) != len(header):
                    raise DataSourceError(
                        f"data source '{path}' is malformed at line {reader.line_num}: "
                        f"{len(row)} fields where the header has {len(header)}; check the "
                        "separator and quoting of that line"
                    )
                rows.append(row)
    except csv.Error as exc:
        raise DataSourceError(
            f"data source '{path}' is malformed near line {_line_of(exc, stopped_at + 1)}: {exc}; "
            "check quoting"
        ) from None
    except UnicodeDecodeError as exc:
        raise DataSourceError(
            f"data source '{path}' is not UTF-8 text (undecodable byte at offset {exc.start}); "
            "re-export it as UTF-8"
        ) from None
    except OSError as exc:
        raise DataSourceError(f"data source '{path}' cannot be read: {exc.strerror}") from None
    columns = {name: [r[i] for r in rows] for i, name in enumerate(header)}
    return pd.DataFrame(columns, columns=header, dtype=object)


def _sniff_delimiter(header_line: str) -> str:
    """The header's separator among , ; tab | — a one-column header falls back to a comma."""
    try:
        return csv.Sniffer().sniff(header_line, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        return ","


def _check_header(path: Path, header: list[str]) -> None:
    if any(not h for h in header):
        raise DataSourceError(
            f"data source '{path}' has an empty column name in its header "
            f"(column {header.index('') + 1}); name every column"
        )
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataSourceError(f"data source '{path}' repeats column names {dupes}; rename them")


def _line_of(exc: csv.Error, next_line: int) -> str:
    """The line an error names, else the line after the last row read (where an unclosed quote
    starts)."""
    match = re.search(r"line (\d+)", str(exc))
    return match.group(1) if match else str(next_line)


# ---- Parquet and SQL ----------------------------------------------------------------------------


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataSourceError(
            f"data source '{path}' is not a readable Parquet file ({type(exc).__name__}); "
            "check that the file is complete and really Parquet"
        ) from None
    return _as_text(frame)


def _read_sql(url: str, *, table: str | None, query: str | None) -> pd.DataFrame:
    import sqlalchemy as sa
    from sqlalchemy.exc import ArgumentError, NoSuchTableError, SQLAlchemyError

    if (table is None) == (query is None):
        raise DataSourceError("a SQL data source needs exactly one of 'table' or 'query'")
    try:
        shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise DataSourceError(
            "data source is not a valid SQLAlchemy URL: use e.g. sqlite:///customers.db or "
            "postgresql+psycopg://user@host/db"
        ) from None
    what = f"table '{table}'" if table is not None else "the configured query"
    _check_sqlite_file(url, shown)
    engine = None
    try:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            if query is None:
                assert table is not None
                schema, _, name = table.rpartition(".")
                t = sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=conn)
                result = conn.execute(sa.select(t))
            else:
                result = conn.exec_driver_sql(query)  # verbatim: no ':name' bind parsing
            frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()), dtype=object)
    except NoSuchTableError:
        raise DataSourceError(f"SQL source {shown}: {what} does not exist") from None
    except (SQLAlchemyError, ImportError) as exc:
        # The driver's message can quote row values or bound parameters: only the class goes out.
        raise DataSourceError(
            f"SQL source {shown} failed reading {what} ({type(exc).__name__}); check the URL, "
            "credentials, that the database is reachable and that the table/query is valid"
        ) from None
    finally:
        if engine is not None:
            engine.dispose()
    return _as_text(frame)


def _check_sqlite_file(url: str, shown: str) -> None:
    """SQLite would silently create a missing database file; treat it as a missing source."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    db = parsed.database or ""
    in_memory = db in ("", ":memory:") or db.startswith("file:") or "mode=memory" in db
    if parsed.get_backend_name() == "sqlite" and not in_memory and not Path(db).is_file():
        raise DataSourceError(
            f"SQL source {shown}: database file '{db}' does not exist; check the URL "
            "(sqlite:///relative.db or sqlite:////absolute/path.db)"
        )


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell as the text a CSV export would hold; missing (None/NaN/NaT) becomes ""."""
    return pd.DataFrame(
        {str(c): [_cell_text(v) for v in frame[c].tolist()] for c in frame.columns},
        columns=[str(c) for c in frame.columns],
        dtype=object,
    )


def _cell_text(value: object) -> str:
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        # Integral floats (an int column widened by NULLs) print as ints so "1.0" matches "1".
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return str(value)
