"""Expected errors on the command line: the message and a non-zero exit, never a traceback.

Every domain error derives from `common.errors.AtollError`; the root `atoll` command
(`atoll.cli_common.AtollGroup`) turns one that escapes a sub-command into `error: <message>` and
exit 1, and `atoll --debug` shows its traceback. The data files plant a canary value that no
output may echo.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from atoll.cli import app
from client.data_source import DataSourceError
from client.validation import SchemaMismatchError
from common.errors import AtollError
from common.synth import write_csv

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "contracts" / "synthetic.yaml"
CANARY = "CANARY-cli-5e1d"


def _data(tmp_path: Path, *, drop: str | None = None) -> Path:
    """A synthetic node file (a canary planted in a categorical column), optionally minus `drop`."""
    full = tmp_path / "full.csv"
    write_csv(full, 200, 0, 2)
    with full.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["channel"] = CANARY
    columns = [c for c in rows[0] if c != drop]
    out = tmp_path / "node.csv"
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_every_domain_error_is_an_expected_error() -> None:
    from common.contract import ContractError
    from privacy.audit import AuditError
    from privacy.ledger import BudgetRefused
    from server.registry import ModelNotFound

    for cls in (ContractError, DataSourceError, SchemaMismatchError, AuditError, ModelNotFound):
        assert issubclass(cls, AtollError), cls
    assert issubclass(BudgetRefused, AtollError)
    assert issubclass(SchemaMismatchError, ValueError)  # what existing handlers catch still works


def test_a_missing_column_is_a_message_and_exit_1_not_a_traceback(tmp_path: Path) -> None:
    data = _data(tmp_path, drop="tenure_months")
    result = CliRunner().invoke(app, ["contract", "check", str(CONTRACT), "--data", str(data)])
    assert result.exit_code == 1, result.output
    assert "error: data does not match contract 'synthetic-churn'" in result.output
    assert "missing required column(s) ['tenure_months']" in result.output
    assert "What to do" in result.output
    assert "Traceback" not in result.output and CANARY not in result.output
    assert isinstance(result.exception, SystemExit)  # ended by the command, not by an error


def test_a_malformed_file_names_the_line_where_its_quote_opens(tmp_path: Path) -> None:
    data = tmp_path / "broken.csv"
    data.write_text('customer_id,tenure_months\nc1,3\nc2,"4\nc3,5\n')
    result = CliRunner().invoke(app, ["contract", "check", str(CONTRACT), "--data", str(data)])
    assert result.exit_code == 1, result.output
    assert "is malformed near line 3" in result.output and "check quoting" in result.output


def test_debug_shows_the_error_itself(tmp_path: Path) -> None:
    data = _data(tmp_path, drop="tenure_months")
    args = ["--debug", "contract", "check", str(CONTRACT), "--data", str(data)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert isinstance(result.exception, SchemaMismatchError)


def test_a_valid_file_still_passes(tmp_path: Path) -> None:
    data = _data(tmp_path)
    result = CliRunner().invoke(app, ["contract", "check", str(CONTRACT), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert '"rows_read": 200' in result.output
    assert '"channel": 1' in result.output.split('"unknown_categories"')[1]  # counted, not named
    assert CANARY not in result.output  # the report holds counts, never values


@pytest.mark.cli
def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    data = _data(tmp_path, drop="tenure_months")
    env = {**os.environ, "COLUMNS": "200"}
    argv = [sys.executable, "-m", "atoll", "contract", "check", str(CONTRACT), "--data", str(data)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "missing required column(s) ['tenure_months']" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert CANARY not in proc.stderr + proc.stdout


def test_federate_on_a_column_the_data_lacks_is_a_message(tmp_path: Path) -> None:
    data = _data(tmp_path)
    args = ["federate", "--data", str(data), "--contract", str(CONTRACT)]
    args += ["--partition-by", "nope", "--workdir", str(tmp_path / "fed"), "--no-serve"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "error: partition column 'nope' is not in node.csv" in result.output
    assert "Traceback" not in result.output
