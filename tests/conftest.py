"""Shared pytest fixtures. Keep this file small: put test-specific fixtures in the test module."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
