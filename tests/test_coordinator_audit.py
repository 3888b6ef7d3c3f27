"""The coordinator's audit log: every run's trail ends, even when its ServerApp was killed."""

from __future__ import annotations

from pathlib import Path

from privacy.audit import load_public_keys, query, verify
from server.coordinator_audit import CoordinatorAudit, close_abandoned_runs


def test_a_run_killed_without_an_end_entry_is_closed_once_and_the_chain_verifies(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    key = tmp_path / "audit" / "coordinator.pem"
    for run_id, end in (("11", "run.finished"), ("12", None), ("13", "run.failed"), ("14", None)):
        audit = CoordinatorAudit(url, key, run_id)
        audit("run.started", contract="c")
        if end is not None:
            audit(end, run=run_id)
        audit.log.close()

    assert close_abandoned_runs(url, key) == ["12", "14"]
    assert close_abandoned_runs(url, key) == []  # idempotent: each trail gets one end

    abandoned = query(url, "coordinator", action="run.abandoned")
    assert [(e.subject, e.details["run"]) for e in abandoned] == [
        ("run:12", "12"),
        ("run:14", "14"),
    ]
    started = {e.subject: e.seq for e in query(url, "coordinator", action="run.started")}
    assert [e.details["started_seq"] for e in abandoned] == [started["run:12"], started["run:14"]]
    assert "killed" in abandoned[0].details["reason"]
    assert verify(url, "coordinator", load_public_keys([key.with_suffix(".pub")])).ok


def test_a_log_without_runs_gets_no_entries(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    key = tmp_path / "coordinator.pem"
    assert close_abandoned_runs(url, key) == []
    assert query(url, "coordinator") == []
