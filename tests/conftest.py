"""Shared pytest fixtures. Keep this file small: put test-specific fixtures in the test module."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PG_URL = os.environ.get("ATOLL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL into a fresh schema of the local PostgreSQL (dropped afterwards).

    The server is the one CI starts (`make postgres`; ATOLL_TEST_PG_URL overrides the default).
    Unreachable means failure, never a skip: the PostgreSQL variants are part of the suite.
    """
    base = make_url(PG_URL)
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL at {base.render_as_string(hide_password=True)} is unreachable "
            f"({type(exc).__name__}); start it or set ATOLL_TEST_PG_URL — this test never skips"
        )
    schema = f"atoll_test_{uuid.uuid4().hex[:12]}"
    with conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
                hide_password=False
            )
        finally:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data sets (../shared/data); skips the test if they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (see shared/data/README.md)")
    return SHARED_DATA


def _shared_file(shared_data: Path, name: str) -> Path:
    path = shared_data / name
    if not path.is_file():
        pytest.skip(f"real data set {path} not found")
    return path


@pytest.fixture(scope="session")
def telco_csv(shared_data: Path) -> Path:
    """IBM Telco Customer Churn CSV (7043 rows)."""
    return _shared_file(shared_data, "Telco-Customer-Churn.csv")


@pytest.fixture(scope="session")
def bank_csv(shared_data: Path) -> Path:
    """UCI Bank Marketing bank-full.csv (45211 rows, ';'-separated, no id column)."""
    return _shared_file(shared_data, "bank-full.csv")
