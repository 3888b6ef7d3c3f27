"""The node's privacy-budget ledger: composition, enforcement, atomicity, persistence, integrity."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import secrets
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from common.db import make_engine
from privacy.audit import load_public_keys, query, verify
from privacy.dp import PlannedEvent, calibrate_run_noise, epsilon, plan_run
from privacy.journal import ANCHOR, KEY_FILE, Journal
from privacy.journal_format import canonical
from privacy.ledger import (
    BudgetRefused,
    Ledger,
    LedgerUnavailable,
    PeriodCap,
    Policy,
    RequestLimits,
    period_start,
)
from privacy.ledger import core as ledger_core
from privacy.ledger.state import PolicySet
from privacy.store import open_privacy_db

DELTA = 1e-5
MacFn = Callable[[dict[str, Any], str], str]  # (row, prev_mac) -> mac


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """None: the node's own SQLite file in its state dir; else a fresh PostgreSQL schema."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def _url(state: Path, url: str | None) -> str:
    return url or f"sqlite:///{state / 'node-privacy.db'}"


def _sql(state: Path, url: str | None, statement: str) -> None:
    """What an attacker with write access to the database (but not the key) can do."""
    engine = make_engine(_url(state, url))
    with engine.begin() as conn:
        conn.exec_driver_sql(statement)
    engine.dispose()


def _journal(state: Path, url: str | None) -> list[dict[str, Any]]:
    engine = make_engine(_url(state, url))
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM ledger_journal ORDER BY seq")).mappings().all()
    engine.dispose()
    return [dict(r) for r in rows]


def _rechain(
    state: Path, url: str | None, rows: list[dict[str, Any]], mac: MacFn, keep: int = 0
) -> None:
    """Replace the journal by `rows`, renumbered and re-chained by `mac` after the first `keep`."""
    prev = rows[keep - 1]["mac"] if keep else "0" * 64
    chained = rows[:keep]
    for i, row in enumerate(rows[keep:], start=keep + 1):
        row = row | {"seq": i, "prev_mac": prev}
        row["mac"] = prev = mac(row, prev)
        chained.append(row)
    engine = make_engine(_url(state, url))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger_journal"))
        for row in chained:
            conn.execute(
                text(
                    "INSERT INTO ledger_journal (seq, kind, run_id, payload, created_at, "
                    "prev_mac, mac) VALUES (:seq, :kind, :run_id, :payload, :created_at, "
                    ":prev_mac, :mac)"
                ),
                row,
            )
    engine.dispose()


def _anchor(state: Path) -> dict[str, Any]:
    anchor: dict[str, Any] = json.loads((state / ANCHOR).read_text())
    return anchor


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


def _race(state_dir: str, url: str | None, run_id: str, queue: mp.Queue) -> None:
    ledger = Ledger(state_dir, url=url)
    try:
        ledger.reserve(run_id, "churn", "training", _plan(rounds=3))
        queue.put(("ok", run_id))
    except BudgetRefused as err:
        queue.put((err.code, run_id))
    except Exception as err:  # reported, not lost: the assertion then shows what went wrong
        queue.put((f"{type(err).__name__}: {err}", run_id))


def test_two_runs_racing_for_the_last_budget_at_most_one_wins(
    tmp_path: Path, db_url: str | None
) -> None:
    one_run = epsilon([p[:3] for p in _plan(rounds=3)], DELTA)
    two_runs = epsilon([p[:3] for p in _plan(rounds=3) * 2], DELTA)
    cap = (one_run + two_runs) / 2  # room for one run, not two (composition is sublinear)
    state = tmp_path / "s"
    Ledger.initialize(state, "n", Policy(cap_epsilon=cap, delta=DELTA), url=db_url).close_db()
    ctx = mp.get_context("fork")  # separate processes, separate connections, one database
    for attempt in range(2):
        queue: mp.Queue = ctx.Queue()
        procs = [
            ctx.Process(target=_race, args=(str(state), db_url, f"r{attempt}-{i}", queue))
            for i in range(4)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        results = [queue.get(timeout=5)[0] for _ in procs]
        assert results.count("ok") <= 1, results
        if attempt == 0:
            assert results.count("ok") == 1 and results.count("cap") == 3, results
        ledger = Ledger(state, url=db_url)
        assert ledger.epsilon(include_reserved=True) <= cap
        for r in ledger.status().runs:
            ledger.close(r.run_id)
        assert ledger.verify() == len(_journal(state, db_url)) == _anchor(state)["head_seq"]
        ledger.close_db()


def test_spend_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "s"
    first = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))
    _run(first, "run-1", _plan())
    spent = first.epsilon()
    first.close_db()
    reopened = Ledger(state)
    assert reopened.epsilon() == pytest.approx(spent) and spent > 0
    assert reopened.status().runs[0].run_id == "run-1"


# ---- integrity: every attack below must make the ledger refuse, never report less ε -----------


def test_modified_entry_blocks_training(tmp_path: Path, db_url: str | None) -> None:
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA), url=db_url)
    _run(ledger, "run-1", _plan())  # entries: init, policy, reserve, 6 releases, close
    ledger.close_db()
    fewer_steps = "replace(payload, '\"steps\":50', '\"steps\":1')"  # the first release
    _sql(state, db_url, f"UPDATE ledger_journal SET payload = {fewer_steps} WHERE seq = 4")
    with pytest.raises(LedgerUnavailable, match="integrity check failed at entry 4"):
        Ledger(state, url=db_url)


@pytest.mark.parametrize("closed", [False, True])
def test_deleting_the_newest_release_is_detected(
    tmp_path: Path, db_url: str | None, closed: bool
) -> None:
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA), url=db_url)
    plan = _plan()
    ledger.reserve("run-1", "churn", "training", plan)
    for i, ev in enumerate(plan, start=1):
        ledger.record("run-1", i, ev.purpose, ev.noise_multiplier, ev.sample_rate, ev.steps)
    if closed:
        ledger.close("run-1")  # then the newest release is not the newest entry
    spent = ledger.epsilon()
    newest = max(r["seq"] for r in _journal(state, db_url) if r["kind"] == "release")
    _sql(state, db_url, f"DELETE FROM ledger_journal WHERE seq = {newest}")
    expected = "integrity check failed" if closed else "newest entries were deleted"
    with pytest.raises(LedgerUnavailable, match=expected):
        ledger.epsilon()  # a long-lived node notices at its next read
    with pytest.raises(LedgerUnavailable, match="restore"):
        ledger.verify()
    ledger.close_db()
    with pytest.raises(LedgerUnavailable, match=expected):
        Ledger(state, url=db_url)
    assert spent > 0


def _other_key_mac(key: bytes) -> MacFn:
    return lambda row, prev: Journal(Path("."), key).mac(
        row["seq"], row["kind"], row["run_id"], row["payload"], row["created_at"], prev
    )


def _sha256_mac(row: dict, prev: str) -> str:
    fields = [row["seq"], row["kind"], row["run_id"], row["payload"], row["created_at"], prev]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


FORGERS: dict[str, MacFn] = {
    "zero-key": _other_key_mac(bytes(32)),
    "random-key": _other_key_mac(secrets.token_bytes(32)),
    "plain-sha256": _sha256_mac,
}


@pytest.mark.parametrize("forger", sorted(FORGERS))
def test_a_journal_rewritten_without_the_key_is_refused(
    tmp_path: Path, db_url: str | None, forger: str
) -> None:
    """Drop the last run's releases and re-chain everything under a guessed key or plain sha256."""
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA), url=db_url)
    _run(ledger, "run-1", _plan())
    ledger.close_db()
    rows = [r for r in _journal(state, db_url) if r["kind"] != "release"]
    _rechain(state, db_url, rows, FORGERS[forger])
    with pytest.raises(LedgerUnavailable, match="integrity check failed at entry 1"):
        Ledger(state, url=db_url)


def test_an_inserted_policy_raising_the_cap_is_refused(tmp_path: Path, db_url: str | None) -> None:
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=2.2, delta=DELTA), url=db_url)
    _run(ledger, "run-1", _plan(rounds=3))
    ledger.close_db()
    raised = canonical(PolicySet(policy=Policy(cap_epsilon=1000, delta=DELTA), set_by="owner"))
    rows = _journal(state, db_url)
    forged = rows[-1] | {"kind": "policy", "run_id": None, "payload": raised}
    _rechain(state, db_url, [*rows, forged], FORGERS["random-key"], keep=len(rows))  # appended
    with pytest.raises(LedgerUnavailable, match=f"integrity check failed at entry {len(rows) + 1}"):
        Ledger(state, url=db_url)
    inserted = [*rows[:2], forged, *rows[2:]]  # right after the initial policy, all re-chained
    _rechain(state, db_url, inserted, FORGERS["random-key"])
    with pytest.raises(LedgerUnavailable, match="integrity check failed at entry 1"):
        Ledger(state, url=db_url)


def test_restoring_an_older_copy_of_the_database_is_detected(tmp_path: Path) -> None:
    state = tmp_path / "s"
    db = state / "node-privacy.db"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))
    _run(ledger, "run-1", _plan())
    ledger.close_db()  # checkpoints the WAL: the .db file is the whole database
    yesterday = db.read_bytes()
    ledger = Ledger(state)
    _run(ledger, "run-2", _plan())
    assert ledger.epsilon() > 0
    ledger.close_db()
    db.write_bytes(yesterday)
    with pytest.raises(LedgerUnavailable, match="older copy of the database was restored"):
        Ledger(state)


def test_an_edited_anchor_is_detected(tmp_path: Path) -> None:
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))
    _run(ledger, "run-1", _plan())
    ledger.close_db()
    rows = _journal(state, None)
    _sql(state, None, "DELETE FROM ledger_journal WHERE seq > 3")
    anchor = _anchor(state) | {"head_seq": 3, "head_mac": rows[2]["mac"]}  # no key: old mac
    (state / ANCHOR).write_text(json.dumps(anchor))
    with pytest.raises(LedgerUnavailable, match="anchor ledger.anchor.json was modified"):
        Ledger(state)


def test_a_deleted_anchor_or_key_blocks_training_for_good(tmp_path: Path) -> None:
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))
    _run(ledger, "run-1", _plan())
    ledger.close_db()
    anchor = (state / ANCHOR).read_bytes()
    (state / ANCHOR).unlink()
    with pytest.raises(LedgerUnavailable, match="anchor ledger.anchor.json is missing"):
        Ledger(state)
    with pytest.raises(LedgerUnavailable, match="only be continued, not reset"):
        Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))
    (state / ANCHOR).write_bytes(anchor)
    key = state / KEY_FILE
    key.unlink()
    with pytest.raises(LedgerUnavailable, match="ledger.key is missing.*restore"):
        Ledger(state)
    with pytest.raises(LedgerUnavailable, match="only be continued, not reset"):
        Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))
    assert not key.exists()  # never re-created


def test_the_key_is_private_and_outside_the_database(tmp_path: Path) -> None:
    state = tmp_path / "s"
    Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA)).close_db()
    key = state / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key.read_text().strip())) == 32
    assert key.read_text().strip().encode() not in (state / "node-privacy.db").read_bytes()
    key.chmod(0o644)
    with pytest.raises(LedgerUnavailable, match="readable by other users"):
        Ledger(state)


def test_a_crash_between_commit_and_anchor_rolls_forward(tmp_path: Path) -> None:
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))
    plan = _plan()
    ledger.reserve("run-1", "churn", "training", plan)
    first, second = plan[0], plan[1]
    ledger.record("run-1", 1, "training", first.noise_multiplier, first.sample_rate, first.steps)
    before = (state / ANCHOR).read_bytes()
    ledger.record("run-1", 2, "training", second.noise_multiplier, second.sample_rate, second.steps)
    spent = ledger.epsilon()
    ledger.close_db()
    (state / ANCHOR).write_bytes(before)  # committed, then the node died before anchoring
    assert _anchor(state)["head_seq"] == 4
    reopened = Ledger(state)
    assert reopened.epsilon() == pytest.approx(spent)
    assert _anchor(state)["head_seq"] == 5 == reopened.verify()
    reopened.close_db()
    _sql(state, None, "DELETE FROM ledger_journal WHERE seq = 5")  # the rolled-forward head
    with pytest.raises(LedgerUnavailable, match="newest entries were deleted"):
        Ledger(state)


def test_an_old_format_ledger_is_refused_as_such(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    engine = open_privacy_db(f"sqlite:///{state / 'node-privacy.db'}")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ledger_meta (ledger_id, node_name, created_at) "
                "VALUES ('x', 'n', '2025-01-01 00:00:00')"
            )
        )
    engine.dispose()
    (state / ANCHOR).write_text(json.dumps({"ledger_id": "x", "node": "n"}))
    with pytest.raises(LedgerUnavailable, match="old format"):
        Ledger(state)
    with pytest.raises(LedgerUnavailable, match="only be continued, not reset"):
        Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))


def test_a_postgresql_ledger_keeps_key_and_anchor_in_its_state_dir(
    tmp_path: Path, postgres_url: str
) -> None:
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA), url=postgres_url)
    _run(ledger, "run-1", _plan())
    spent = ledger.epsilon()
    ledger.close_db()
    assert {p.name for p in state.iterdir()} >= {ANCHOR, KEY_FILE}
    assert not (state / "node-privacy.db").exists()
    reopened = Ledger(state, url=postgres_url)
    assert reopened.epsilon() == pytest.approx(spent) and reopened.verify() == 10
    reopened.close_db()
    with pytest.raises(LedgerUnavailable, match="already holds a privacy ledger"):
        Ledger.initialize(tmp_path / "other", "m", Policy(cap_epsilon=10), url=postgres_url)
    assert not (tmp_path / "other" / KEY_FILE).exists()  # refused before creating anything


def test_every_mutation_is_one_journal_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))
    ledger.set_policy(Policy(cap_epsilon=9, delta=DELTA, reservation_hours=1))
    one_round = _plan(rounds=1, eval_noise=0)
    ledger.reserve("old", "churn", "training", one_round)
    later = datetime.now(UTC) + timedelta(hours=2)
    with monkeypatch.context() as m:
        m.setattr(ledger_core, "utcnow", lambda: later)
        ledger.reserve("new", "churn", "training", one_round)  # "old" expired first
        ledger.record("new", 1, "training", 1.0, 0.02, 50)
        with pytest.raises(BudgetRefused, match="not covered"):
            ledger.record("new", 2, "training", 1.0, 0.02, 50)
        ledger.close("new")
        with pytest.raises(BudgetRefused, match="already finished"):
            ledger.reserve("new", "churn", "training", one_round)
    kinds = [r["kind"] for r in _journal(state, None)]
    assert kinds == [
        "init", "policy", "policy", "reserve", "expire", "reserve", "release", "refusal",
        "close", "refusal",
    ]  # fmt: skip
    assert {r.run_id: r.status for r in ledger.status().runs} == {"old": "expired", "new": "closed"}
    assert [r["code"] for r in ledger.refusals()] == ["over-reservation", "closed"]
    assert ledger.verify() == len(kinds) == _anchor(state)["head_seq"]


def test_limits_round_trip_through_the_policy_and_show_in_status(tmp_path: Path) -> None:
    assert Policy(cap_epsilon=1).limits == RequestLimits()
    assert RequestLimits().allowed_models == ("logreg", "mlp", "additive")
    for bad in ({"max_eval_bins": 1}, {"min_noise_multiplier": 0}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            RequestLimits.model_validate(bad)
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))
    limits = RequestLimits(
        max_weight_norm=5,
        min_expected_batch=16,
        max_local_epochs=2,
        max_total_rounds=7,
        max_eval_bins=10,
        min_noise_multiplier=0.9,
        allowed_models=("logreg",),
    )
    ledger.set_policy(Policy(cap_epsilon=10, delta=DELTA, limits=limits))
    ledger.close_db()
    reopened = Ledger(state)
    assert reopened.policy().limits == limits
    assert reopened.status().policy.limits == limits
    assert "DP-SGD" in " ".join(reopened.status().covers)


def test_a_policy_change_is_in_the_node_audit_log(tmp_path: Path) -> None:
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))
    ledger.set_policy(
        Policy(cap_epsilon=12, delta=DELTA, limits=RequestLimits(max_eval_bins=20)), "owner"
    )
    entries = query(ledger.engine, "node:n", action="policy.changed")
    assert [e.details["policy"]["cap_epsilon"] for e in entries] == [10, 12]
    assert entries[0].details["initial"] is True and entries[0].details["journal_seq"] == 2
    assert entries[1].details["policy"]["limits"]["max_eval_bins"] == 20
    assert entries[1].actor == "node:n" and entries[1].subject == "ledger"
    keys = load_public_keys([state / "audit-key" / "audit.pub"])
    assert verify(ledger.engine, "node:n", keys).ok


def test_deleted_first_entry_or_database_block_training(tmp_path: Path) -> None:
    state = tmp_path / "s"
    ledger = Ledger.initialize(state, "n", Policy(cap_epsilon=10, delta=DELTA))
    _run(ledger, "run-1", _plan())
    ledger.close_db()
    _sql(state, None, "DELETE FROM ledger_journal WHERE seq = 1")
    with pytest.raises(LedgerUnavailable, match="entry 1"):
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
    monkeypatch.setattr(ledger_core, "utcnow", lambda: then)


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
