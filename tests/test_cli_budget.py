"""`atoll budget` for node owners: the policy they set is the one the ledger enforces and shows."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from atoll.cli import app
from privacy.audit import query
from privacy.dp import plan_run
from privacy.ledger import Ledger, Policy, RequestLimits

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


LIMITS = [
    "--max-weight-norm", "50", "--min-expected-batch", "16", "--max-local-epochs", "3",
    "--max-total-rounds", "20", "--max-eval-bins", "30", "--min-noise", "0.8",
    "--allowed-model", "logreg",
]  # fmt: skip


def test_limits_are_set_by_init_and_policy_and_shown(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    res = runner.invoke(
        app, ["budget", "init", "--state-dir", state, "--node-name", "sales", "--cap", "8", *LIMITS]
    )
    assert res.exit_code == 0, res.output
    expected = RequestLimits(
        max_weight_norm=50,
        min_expected_batch=16,
        max_local_epochs=3,
        max_total_rounds=20,
        max_eval_bins=30,
        min_noise_multiplier=0.8,
        allowed_models=("logreg",),
    )
    ledger = Ledger(tmp_path / "state")
    assert ledger.policy().limits == expected
    ledger.close_db()
    shown = runner.invoke(app, ["budget", "show", "--state-dir", state])
    text = " ".join(shown.output.split())
    assert shown.exit_code == 0, shown.output
    for part in ("weight L2 norm ≤ 50", "expected batch ≥ 16", "local epochs ≤ 3",
                 "total rounds ≤ 20", "evaluation bins ≤ 30", "noise multiplier ≥ 0.8",
                 "models: logreg", "DP-SGD training steps", "noised evaluation histograms",
                 "δ=1e-05"):  # fmt: skip
        assert part in text, (part, text)
    res = runner.invoke(
        app, ["budget", "policy", "--state-dir", state, "--cap", "9", "--max-eval-bins", "12",
              "--allowed-model", "logreg", "--allowed-model", "mlp"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    status = json.loads(
        runner.invoke(app, ["budget", "show", "--state-dir", state, "--json"]).output
    )
    limits = status["policy"]["limits"]
    assert limits["max_eval_bins"] == 12 and limits["allowed_models"] == ["logreg", "mlp"]
    assert limits["max_weight_norm"] == RequestLimits().max_weight_norm  # not given: default
    assert status["cap_epsilon"] == 9 and status["covers"]
    ledger = Ledger(tmp_path / "state")
    changes = query(ledger.engine, "node:sales", action="policy.changed")
    assert [c.details["policy"]["cap_epsilon"] for c in changes] == [8, 9]  # once each
    ledger.close_db()


def test_bad_limits_get_a_usage_error_naming_the_option(tmp_path: Path) -> None:
    state = str(tmp_path / "s")
    base = ["budget", "init", "--state-dir", state, "--node-name", "n", "--cap", "8"]
    for extra, expected in (
        (["--max-eval-bins", "1"], "--max-eval-bins: Input should be greater than or equal to 2"),
        (["--min-noise", "0"], "--min-noise: Input should be greater than 0"),
        (["--max-weight-norm", "-3"], "--max-weight-norm"),
        (["--max-local-epochs", "0"], "--max-local-epochs"),
        (["--max-total-rounds", "many"], "is not a valid integer"),
        (["--min-expected-batch", "0"], "--min-expected-batch"),
    ):
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2, (extra, res.output)
        assert expected in " ".join(res.output.split()), (extra, res.output)
        assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not (tmp_path / "s" / "node-privacy.db").exists()
    assert runner.invoke(app, base).exit_code == 0
    res = runner.invoke(
        app, ["budget", "policy", "--state-dir", state, "--cap", "8", "--max-eval-bins", "0"]
    )
    assert res.exit_code == 2 and "--max-eval-bins" in " ".join(res.output.split())
    ledger = Ledger(tmp_path / "s")
    assert ledger.policy().limits == RequestLimits()  # unchanged
    ledger.close_db()


def test_a_tampered_ledger_is_a_clear_message_and_a_non_zero_exit(tmp_path: Path) -> None:
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=8, delta=1e-5))
    plan = plan_run(noise_multiplier=1.0, sample_rate=0.02, rounds=1, epochs=1, eval_noise=0)
    ledger.reserve("run-1", "churn", "training", plan)
    ledger.record("run-1", 1, "training", 1.0, 0.02, 50)
    ledger.close_db()
    with sqlite3.connect(state / "node-privacy.db") as conn:
        conn.execute("DELETE FROM ledger_journal WHERE seq = (SELECT max(seq) FROM ledger_journal)")
    conn.close()
    for command in (["show"], ["show", "--json"], ["refusals"], ["policy", "--cap", "100"]):
        res = runner.invoke(app, ["budget", *command, "--state-dir", str(state)])
        text = " ".join(res.output.split())
        assert res.exit_code == 2, (command, res.output)
        assert isinstance(res.exception, SystemExit), (command, res.exception)
        assert "ledger unavailable" in text and "newest entries were deleted" in text, text
        assert "refuses to train" in text and "restore" in text, text
    (state / "ledger.key").unlink()
    res = runner.invoke(app, ["budget", "show", "--state-dir", str(state)])
    assert res.exit_code == 2 and "ledger.key is missing" in " ".join(res.output.split())
