"""The node's privacy-budget ledger: composition, enforcement, atomicity, persistence, integrity."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from privacy import ledger as ledger_module
from privacy.dp import PlannedEvent, calibrate_run_noise, epsilon, plan_run
from privacy.ledger import (
    BudgetRefused,
    Ledger,
    LedgerUnavailable,
    PeriodCap,
    Policy,
    period_start,
)

DELTA = 1e-5


def _run(ledger: Ledger, run_id: str, plan: list[PlannedEvent]) -> None:
    """Reserve a run and spend every planned release, round by round."""
    ledger.reserve(run_id, "churn", "training", plan)
    for i, ev in enumerate(plan, start=1):
        ledger.record(run_id, i, ev.purpose, ev.noise_multiplier, ev.sample_rate, ev.steps)
    ledger.close(run_id)


def _plan(noise: float = 1.0, rate: float = 0.02, rounds: int = 3, eval_noise: float = 10.0):
    return plan_run(
        noise_multiplier=noise, sample_rate=rate, rounds=rounds, epochs=1, eval_noise=eval_noise
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.initialize(tmp_path / "state", "node-a", Policy(cap_epsilon=10.0, delta=DELTA))


def test_cumulative_epsilon_is_the_composition_not_the_sum(ledger: Ledger) -> None:
    plan_a, plan_b = _plan(1.0, 0.02, 3), _plan(0.8, 0.01, 2)
    _run(ledger, "run-a", plan_a)
    _run(ledger, "run-b", plan_b)
    both = [p[:3] for p in plan_a + plan_b]
    assert ledger.epsilon() == pytest.approx(epsilon(both, DELTA), rel=1e-9)
    eps_a, eps_b = ledger.run_epsilon("run-a"), ledger.run_epsilon("run-b")
    assert eps_a == pytest.approx(epsilon([p[:3] for p in plan_a], DELTA))
    assert ledger.epsilon() < eps_a + eps_b - 0.1  # composition is strictly tighter
    status = ledger.status()
    assert status.spent_epsilon == pytest.approx(ledger.epsilon())
    assert status.remaining_epsilon == pytest.approx(10.0 - ledger.epsilon())
    assert [r.status for r in status.runs] == ["closed", "closed"]


def test_status_names_the_accountant_and_reports_the_minimum(ledger: Ledger) -> None:
    """Every ε the ledger reports is min(RDP, PLD) of the history (see test_dp_accounting.py)."""
    plan = _plan()
    _run(ledger, "run-a", plan)
    history = [p[:3] for p in plan]
    status = ledger.status()
    assert status.accountant == "min(rdp, pld)"
    rdp, pld = epsilon(history, DELTA, "rdp"), epsilon(history, DELTA, "pld")
    assert status.spent_epsilon == min(rdp, pld) == pld < rdp
    assert status.runs[0].spent_epsilon == status.runs[0].planned_epsilon == pld


def test_run_over_the_cap_is_refused_with_numbers_and_recorded(tmp_path: Path) -> None:
    ledger = Ledger.initialize(tmp_path / "s", "node-a", Policy(cap_epsilon=2.2, delta=DELTA))
    _run(ledger, "run-1", _plan(rounds=3))  # ε ≈ 1.77; two such runs ≈ 2.40
    before = ledger.epsilon()
    with pytest.raises(BudgetRefused) as err:
        ledger.reserve("run-2", "churn", "training", _plan(rounds=3))
    msg = str(err.value)
    assert err.value.code == "cap"
    assert "remains" in msg and "difference" in msg and "cap 2.200" in msg
    assert err.value.remaining == pytest.approx(2.2 - before, abs=1e-6)
    both = [p[:3] for p in _plan(rounds=3) * 2]
    assert err.value.requested == pytest.approx(epsilon(both, DELTA))
    assert ledger.epsilon() == before  # nothing spent, nothing held
    assert [r["code"] for r in ledger.refusals()] == ["cap"]


def test_policy_limits_per_run_task_and_purpose(tmp_path: Path) -> None:
    policy = Policy(
        cap_epsilon=50,
        delta=DELTA,
        max_run_epsilon=1.5,  # 5 rounds ≈ 2.03, 1 round ≈ 1.14
        allowed_tasks=["churn"],
        allowed_purposes=["training"],
        task_caps={"churn": 40},
    )
    ledger = Ledger.initialize(tmp_path / "s", "n", policy)
    with pytest.raises(BudgetRefused) as e1:
        ledger.reserve("r1", "churn", "training", _plan(rounds=5, eval_noise=0))
    assert e1.value.code == "run-cap"
    with pytest.raises(BudgetRefused) as e2:
        ledger.reserve("r2", "propensity", "training", _plan(rounds=1, eval_noise=0))
    assert e2.value.code == "task"
    with pytest.raises(BudgetRefused) as e3:
        ledger.reserve("r3", "churn", "training", _plan(rounds=1, eval_noise=10))
    assert e3.value.code == "purpose"  # evaluation releases are not allowed by this owner
    assert ledger.reserve("r4", "churn", "training", _plan(rounds=1, eval_noise=0)) < 1.5


def test_reservation_is_held_and_unspent_part_released_on_early_end(ledger: Ledger) -> None:
    plan = _plan(rounds=4)
    planned = ledger.reserve("run-x", "churn", "training", plan)
    assert ledger.epsilon(include_reserved=True) == pytest.approx(planned)
    assert ledger.epsilon() == 0.0
    first = plan[0]
    ledger.record("run-x", 1, "training", first.noise_multiplier, first.sample_rate, first.steps)
    ledger.close("run-x")  # the run ended after one round
    assert ledger.epsilon() == pytest.approx(epsilon([first[:3]], DELTA))
    assert ledger.epsilon(include_reserved=True) == pytest.approx(ledger.epsilon())


def test_release_not_covered_by_the_reservation_is_refused(ledger: Ledger) -> None:
    ledger.reserve("run-y", "churn", "training", _plan(rounds=1, eval_noise=0))
    with pytest.raises(BudgetRefused) as err:  # more steps than planned
        ledger.record("run-y", 1, "training", 1.0, 0.02, 51)
    assert err.value.code == "over-reservation"
    with pytest.raises(BudgetRefused):  # less noise than planned
        ledger.record("run-y", 1, "training", 0.5, 0.02, 50)
    with pytest.raises(BudgetRefused):  # no reservation at all
        ledger.record("other-run", 1, "training", 1.0, 0.02, 50)


def _race(state_dir: str, run_id: str, queue: mp.Queue) -> None:
    ledger = Ledger(state_dir)
    try:
        ledger.reserve(run_id, "churn", "training", _plan(rounds=3))
        queue.put(("ok", run_id))
    except BudgetRefused as err:
        queue.put((err.code, run_id))


def test_two_runs_racing_for_the_last_budget_at_most_one_wins(tmp_path: Path) -> None:
    one_run = epsilon([p[:3] for p in _plan(rounds=3)], DELTA)
    two_runs = epsilon([p[:3] for p in _plan(rounds=3) * 2], DELTA)
    cap = (one_run + two_runs) / 2  # room for one run, not two (composition is sublinear)
    state = tmp_path / "s"
    Ledger.initialize(state, "n", Policy(cap_epsilon=cap, delta=DELTA)).close_db()
    ctx = mp.get_context("fork")  # separate processes, separate connections, one database
    for attempt in range(2):
        queue: mp.Queue = ctx.Queue()
        procs = [
            ctx.Process(target=_race, args=(str(state), f"r{attempt}-{i}", queue)) for i in range(4)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        results = [queue.get(timeout=5)[0] for _ in procs]
        assert results.count("ok") <= 1, results
        if attempt == 0:
            assert results.count("ok") == 1 and results.count("cap") == 3
        ledger = Ledger(state)
        assert ledger.epsilon(include_reserved=True) <= cap
        for r in ledger.status().runs:
            ledger.close(r.run_id)


def test_spend_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "s"
    first = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))
    _run(first, "run-1", _plan())
    spent = first.epsilon()
    first.close_db()
    reopened = Ledger(state)
    assert reopened.epsilon() == pytest.approx(spent) and spent > 0
    assert reopened.status().runs[0].run_id == "run-1"


def test_tampered_ledger_blocks_training(tmp_path: Path) -> None:
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))
    _run(ledger, "run-1", _plan())
    ledger.close_db()
    with sqlite3.connect(
        state / "node-privacy.db"
    ) as conn:  # lower the recorded noise... no: steps
        conn.execute("UPDATE ledger_events SET steps = 1 WHERE seq = 2")
    with pytest.raises(LedgerUnavailable, match="integrity check failed at event 2"):
        Ledger(state)


def test_deleted_events_or_database_block_training(tmp_path: Path) -> None:
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))
    _run(ledger, "run-1", _plan())
    ledger.close_db()
    with sqlite3.connect(state / "node-privacy.db") as conn:
        conn.execute("DELETE FROM ledger_events WHERE seq = 1")
    with pytest.raises(LedgerUnavailable, match="event 1"):
        Ledger(state)
    (state / "node-privacy.db").unlink()
    with pytest.raises(LedgerUnavailable, match="missing"):
        Ledger(state)
    with pytest.raises(LedgerUnavailable, match="only be continued, not reset"):
        Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))


def test_replaced_database_is_detected(tmp_path: Path) -> None:
    a = Ledger.initialize(tmp_path / "a", "n", Policy(cap_epsilon=10, delta=DELTA))
    _run(a, "run-1", _plan())
    a.close_db()
    Ledger.initialize(tmp_path / "b", "n", Policy(cap_epsilon=10, delta=DELTA)).close_db()
    (tmp_path / "a" / "node-privacy.db").write_bytes(
        (tmp_path / "b" / "node-privacy.db").read_bytes()
    )
    with pytest.raises(LedgerUnavailable, match="does not belong to its anchor"):
        Ledger(tmp_path / "a")


def test_uninitialised_node_refuses(tmp_path: Path) -> None:
    with pytest.raises(LedgerUnavailable, match="atoll budget init"):
        Ledger(tmp_path / "nothing")


@pytest.mark.parametrize("target", [0.5, 1.0, 3.0, 8.0])
def test_target_epsilon_is_met_within_ten_percent_below(target: float, tmp_path: Path) -> None:
    sigma = calibrate_run_noise(target, DELTA, sample_rate=0.02, rounds=3, epochs=1, eval_noise=20)
    plan = _plan(noise=sigma, rounds=3, eval_noise=20)
    ledger = Ledger.initialize(tmp_path / "s", "n", Policy(cap_epsilon=20, delta=DELTA))
    _run(ledger, "run-t", plan)
    spent = ledger.run_epsilon("run-t")
    assert 0.9 * target <= spent <= target


def _last_period(monkeypatch: pytest.MonkeyPatch, period: str) -> None:
    """Make the ledger's clock read a moment in the previous calendar period."""
    then = period_start(period, datetime.now(UTC)) - timedelta(hours=1)
    monkeypatch.setattr(ledger_module, "utcnow", lambda: then)


def test_period_cap_refuses_while_the_overall_cap_has_room(tmp_path: Path) -> None:
    policy = Policy(cap_epsilon=10, delta=DELTA, period_cap=PeriodCap(period="month", epsilon=2.2))
    ledger = Ledger.initialize(tmp_path / "s", "n", policy)
    _run(ledger, "run-1", _plan(rounds=3))  # ≈1.77; two runs ≈2.40 > 2.2
    spent = ledger.epsilon()
    with pytest.raises(BudgetRefused) as err:
        ledger.reserve("run-2", "churn", "training", _plan(rounds=3))
    msg = str(err.value)
    assert err.value.code == "period-cap"
    assert "this month" in msg and "remains" in msg and "difference" in msg
    assert err.value.remaining == pytest.approx(2.2 - spent, abs=1e-6)
    assert 10 - ledger.epsilon() > 2.2  # the overall cap alone would have allowed it
    status = ledger.status()
    assert status.period is not None and status.period.period == "month"
    assert status.period.spent_epsilon == pytest.approx(spent)
    assert status.period.remaining_epsilon == pytest.approx(2.2 - spent)
    assert [r["code"] for r in ledger.refusals()] == ["period-cap"]


@pytest.mark.parametrize("period", ["month", "quarter", "year"])
def test_releases_of_a_previous_period_do_not_count_against_its_cap(
    period: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = PeriodCap(period=period, epsilon=2.2)  # type: ignore[arg-type]
    ledger = Ledger.initialize(tmp_path / "s", "n", Policy(cap_epsilon=10, delta=DELTA))
    ledger.set_policy(Policy(cap_epsilon=10, delta=DELTA, period_cap=cap))
    with monkeypatch.context() as m:
        _last_period(m, period)
        _run(ledger, "old", _plan(rounds=3))
    ledger.verify()  # written through the ledger's own API: the chain holds
    period_now = ledger.status().period
    assert period_now is not None and period_now.spent_epsilon == 0.0
    ledger.reserve("new", "churn", "training", _plan(rounds=3))  # fits this period's cap
    with pytest.raises(BudgetRefused) as err:  # but two runs in this period do not
        ledger.reserve("newer", "churn", "training", _plan(rounds=3))
    assert err.value.code == "period-cap"


def test_period_cap_limits_the_pace_not_the_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = PeriodCap(period="month", epsilon=2.2)
    ledger = Ledger.initialize(tmp_path / "s", "n", Policy(cap_epsilon=2.2, delta=DELTA))
    ledger.set_policy(Policy(cap_epsilon=2.2, delta=DELTA, period_cap=cap))
    with monkeypatch.context() as m:
        _last_period(m, "month")
        _run(ledger, "old", _plan(rounds=3))
    with pytest.raises(BudgetRefused) as err:  # a fresh month, but the overall cap binds
        ledger.reserve("new", "churn", "training", _plan(rounds=3))
    assert err.value.code == "cap"


def test_period_start_is_the_utc_calendar_boundary() -> None:
    t = datetime(2025, 8, 17, 13, 5, tzinfo=UTC)
    assert period_start("month", t) == datetime(2025, 8, 1, tzinfo=UTC)
    assert period_start("quarter", t) == datetime(2025, 7, 1, tzinfo=UTC)
    assert period_start("year", t) == datetime(2025, 1, 1, tzinfo=UTC)
    assert period_start("quarter", datetime(2025, 3, 31, 23, tzinfo=UTC)).month == 1
