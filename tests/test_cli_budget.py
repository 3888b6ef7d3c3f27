"""`atoll budget` for node owners: the policy they set is the one the ledger enforces and shows."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from atoll.cli import app
from privacy.ledger import Ledger

runner = CliRunner()


def test_init_with_a_period_cap_and_show_it(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    res = runner.invoke(
        app,
        ["budget", "init", "--state-dir", state, "--node-name", "sales", "--cap", "8",
         "--period-cap", "quarter=2.5"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    policy = Ledger(tmp_path / "state").policy()
    assert policy.period_cap is not None
    assert (policy.period_cap.period, policy.period_cap.epsilon) == ("quarter", 2.5)
    shown = runner.invoke(app, ["budget", "show", "--state-dir", state])
    text = " ".join(shown.output.split())  # rich may wrap lines
    assert shown.exit_code == 0 and "this quarter" in text and "min(rdp, pld)" in text
    as_json = runner.invoke(app, ["budget", "show", "--state-dir", state, "--json"])
    status = json.loads(as_json.output)
    assert status["period"]["cap_epsilon"] == 2.5 and status["period"]["remaining_epsilon"] == 2.5


def test_a_malformed_period_cap_is_refused_with_the_expected_form(tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        ["budget", "init", "--state-dir", str(tmp_path / "s"), "--node-name", "n", "--cap", "8",
         "--period-cap", "week=1"],
    )  # fmt: skip
    assert res.exit_code == 2
    assert "month|quarter|year=EPSILON" in res.output
    assert not (tmp_path / "s" / "node-privacy.db").exists()  # nothing half-created


def test_non_numeric_or_non_positive_caps_get_a_usage_error_not_a_traceback(
    tmp_path: Path,
) -> None:
    base = ["budget", "init", "--state-dir", str(tmp_path / "s"), "--node-name", "n", "--cap", "8"]
    for extra, expected in (
        (["--period-cap", "month=lots"], "month|quarter|year=EPSILON"),
        (["--task-cap", "churn=lots"], "TASK=EPSILON"),
        (["--period-cap", "month=-1"], "greater than 0"),
    ):
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2, (extra, res.output)
        assert expected in " ".join(res.output.split()), (extra, res.output)
        assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not (tmp_path / "s" / "node-privacy.db").exists()
