"""Group commit of audit entries (privacy.audit.GroupCommitWriter) on SQLite and PostgreSQL.

Many concurrent writers share transactions, yet: every caller waits for its own entry to be
committed, the log stays ONE intact chain (8 threads × 500 entries in each of 2 processes, run
at the same time against the same log), and a transaction that fails fails exactly the callers
whose entries it held — through the API that is a 503 for those requests and only those.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers.api import RECORD, logreg_weights, publish, publisher_pub
from helpers.audit import PER_THREAD, THREADS, hammer, rendezvous

from privacy.audit import (
    AuditEntry,
    AuditLog,
    AuditSigner,
    AuditWriteError,
    GroupCommitWriter,
    PreparedEntry,
    query,
    verify,
)
from server.api.app import create_app
from server.api.auth import ApiKeyStore
from server.registry import Registry

LOG = "api"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


def _keys(*signers: AuditSigner) -> dict[str, str]:
    return {s.key_id: s.public_key_pem for s in signers}


CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[4])
    from privacy.audit import AuditLog, AuditSigner, GroupCommitWriter
    from helpers.audit import hammer, rendezvous
    url, key, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    log = AuditLog(url, "api", AuditSigner.load(key))
    writer = GroupCommitWriter(log)
    Path(sys.argv[5]).touch()  # ready
    while not go.exists():
        time.sleep(0.001)
    hammer(writer, "child", halfway=rendezvous(go.parent, "child", "parent"))
    writer.close()
    log.close()
    print("batches", writer.batches)
    """
)


def test_8_threads_x_500_in_each_of_2_processes_verify_as_one_chain(
    db_url: str, tmp_path: Path
) -> None:
    here, there = AuditSigner.generate(), AuditSigner.create(tmp_path / "keys" / "child.pem")
    log = AuditLog(db_url, LOG, here)  # migrates the database before the child opens it
    writer = GroupCommitWriter(log)
    go = tmp_path / "go"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, db_url, str(tmp_path / "keys" / "child.pem"), str(go)]
        + [str(Path(__file__).parent), str(tmp_path / "ready")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "ready").exists():  # the child has imported and connected
            assert child.poll() is None and time.monotonic() < deadline, child.stderr
            time.sleep(0.01)
        go.touch()
        t0 = time.monotonic()
        hammer(writer, "parent", halfway=rendezvous(tmp_path, "parent", "child"))
        out, err = child.communicate(timeout=600)
        elapsed = time.monotonic() - t0
    finally:
        if child.poll() is None:
            child.kill()
        writer.close()
        log.close()
    assert child.returncode == 0, err[-3000:]
    total = 2 * THREADS * PER_THREAD
    report = verify(db_url, LOG, _keys(here, there))
    assert report.ok, report.message
    assert (report.entries, report.last_seq) == (total, total)
    assert report.signers == {here.key_id: total // 2, there.key_id: total // 2}
    entries = query(db_url, LOG, limit=None)
    assert [e.seq for e in entries] == list(range(1, total + 1))
    # each thread's entries are in the order it wrote them (it waited for each one)
    by_actor: dict[str, list[int]] = {}
    for e in entries:
        by_actor.setdefault(e.actor, []).append(e.details["i"])
    assert len(by_actor) == 2 * THREADS
    assert all(seq == list(range(PER_THREAD)) for seq in by_actor.values())
    # the processes really interleaved (the halfway rendezvous guarantees it), and entries really
    # shared transactions
    signer_runs = sum(1 for a, b in zip(entries, entries[1:], strict=False) if a.key_id != b.key_id)
    assert signer_runs > 1, "the two processes did not write at the same time"
    child_batches = int(out.split()[-1])
    assert writer.batches < THREADS * PER_THREAD and child_batches < THREADS * PER_THREAD
    print(f"{total} entries in {elapsed:.1f} s; transactions: {writer.batches} + {child_batches}")


def test_a_failed_commit_fails_exactly_the_entries_it_held(db_url: str) -> None:
    signer = AuditSigner.generate()
    log = AuditLog(db_url, LOG, signer)
    writer = GroupCommitWriter(log, max_batch=16)
    batches: list[list[int]] = []
    real = log.append_prepared
    lock = threading.Lock()

    def flaky(items: list[PreparedEntry]) -> list[AuditEntry]:
        with lock:
            batches.append([item.details["n"] for item in items])
            number = len(batches)
        time.sleep(0.002)  # let submissions pile up into the next batch
        if number in (3, 7):  # two transactions fail
            raise AuditWriteError("injected: the database refused the commit")
        return real(items)

    log.append_prepared = flaky  # type: ignore[method-assign]
    futures: dict[int, Future[AuditEntry]] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for n, future in enumerate(
            pool.map(lambda n: writer.submit("apikey:t", "api.predict", "m", {"n": n}), range(400))
        ):
            futures[n] = future
        for future in futures.values():
            future.exception(timeout=60)  # wait for every one
    writer.close()
    failed_batches = [batches[2], batches[6]]
    assert all(len(b) >= 1 for b in failed_batches)
    failed = {n for n, f in futures.items() if f.exception() is not None}
    assert failed == {n for b in failed_batches for n in b}  # exactly those, no other
    for n in failed:
        assert isinstance(futures[n].exception(), AuditWriteError)
    stored = [e.details["n"] for e in query(db_url, LOG, limit=None)]
    assert sorted(stored) == sorted(set(range(400)) - failed)  # none of theirs, all of the rest
    assert verify(db_url, LOG, _keys(signer)).ok
    assert sum(len(b) for b in batches) == 400 and len(batches) < 400  # they were grouped
    log.close()


def test_invalid_entries_are_refused_at_submit_and_the_writer_restarts(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'a.db'}", LOG, AuditSigner.generate())
    writer = GroupCommitWriter(log)
    with pytest.raises(AuditWriteError, match="malformed"):
        writer.submit("apikey:x", "Not An Action")
    assert writer.append("apikey:x", "api.predict", "m").seq == 1
    writer.close()
    writer.close()  # idempotent
    assert writer.append("apikey:x", "api.predict", "m").seq == 2  # a new thread after close
    writer.close()
    assert (
        log.append_many([("a:b", "api.read", "s", {"k": 1}), ("a:b", "api.read", "s", None)])[
            -1
        ].seq
        == 4
    )
    log.close()


# ---- through the API: the requests whose entries a failed transaction held get 503 -------------


def _api(tmp_path: Path) -> tuple[str, str, Any]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    with Registry(url) as registry:
        publish(registry, "toy", "logreg", logreg_weights([1.0, 0, 0, 0, 0, 0], 0.0))
    with ApiKeyStore.open(url) as store:
        key = store.create("crm", "app")[1]
    app = create_app(
        url,
        registry_public_keys=[publisher_pub()],
        rate_per_second=10_000,
        rate_burst=10_000,
        maintenance_seconds=3600,
    )
    return url, key, app


def _concurrent_predicts(app: Any, key: str, sizes: range) -> dict[int, int]:
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(app) as client:

        def call(n: int) -> int:
            body: dict[str, Any] = {"records": [RECORD] * n}
            return client.post("/models/toy/predict", json=body, headers=headers).status_code

        with ThreadPoolExecutor(max_workers=len(sizes)) as pool:
            return dict(zip(sizes, pool.map(call, sizes), strict=True))


def test_a_failed_group_commit_fails_exactly_its_requests(tmp_path: Path) -> None:
    """Both commit paths (on the event loop, and the writer thread) are watched: the transaction
    holding the 3-record request's entry fails; exactly the requests in it get 503."""
    url, key, app = _api(tmp_path)
    log = app.state.api_audit.log
    seen: list[list[int]] = []
    lock = threading.Lock()

    def failing_if_3(commit: Any) -> Any:
        def wrapped(items: list[PreparedEntry]) -> Any:
            records = [int(item.details["records"]) for item in items]
            if 3 in records:
                with lock:
                    seen.append(records)
                raise AuditWriteError("injected")
            result = commit(items)
            if result is not None:
                with lock:
                    seen.append(records)
            return result

        return wrapped

    log.append_prepared = failing_if_3(log.append_prepared)  # type: ignore[method-assign]
    log.try_append_prepared = failing_if_3(log.try_append_prepared)  # type: ignore[method-assign]
    codes = _concurrent_predicts(app, key, range(1, 9))
    [failed_batch] = [b for b in seen if 3 in b]
    assert {n for n, code in codes.items() if code == 503} == set(failed_batch)
    assert {n for n, code in codes.items() if code == 200} == set(range(1, 9)) - set(failed_batch)
    stored = sorted(e.details["records"] for e in query(url, "api", limit=None))
    assert stored == sorted(set(range(1, 9)) - set(failed_batch))


def test_a_commit_the_database_refuses_fails_its_requests_and_no_other(tmp_path: Path) -> None:
    """A real failure, no patching: the database aborts any transaction holding an entry for a
    3-record request. That request gets 503; every 503 left no entry, every 200 left one."""
    url, key, app = _api(tmp_path)
    import sqlite3

    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.execute(
            "CREATE TRIGGER refuse_three BEFORE INSERT ON audit_entries "
            "WHEN NEW.details LIKE '%\"records\":3,%' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    codes = _concurrent_predicts(app, key, range(1, 9))
    stored = {e.details["records"] for e in query(url, "api", limit=None)}
    assert codes[3] == 503 and 3 not in stored
    assert {n for n, code in codes.items() if code == 200} == stored
    assert set(codes.values()) <= {200, 503}


@pytest.mark.postgres
def test_the_api_on_postgresql_group_commits_through_the_writer_thread(
    postgres_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL the loop hands each turn's entries to the writer thread in one submission;
    every request still waits for its own entry, and the chain verifies."""
    with Registry(postgres_url) as registry:
        publish(registry, "toy", "logreg", logreg_weights([1.0, 0, 0, 0, 0, 0], 0.0))
    with ApiKeyStore.open(postgres_url) as store:
        key = store.create("crm", "app")[1]
    audit_key = tmp_path / "keys" / "api.pem"
    app = create_app(
        postgres_url,
        registry_public_keys=[publisher_pub()],
        rate_per_second=10_000,
        rate_burst=10_000,
        maintenance_seconds=3600,
        audit_key=audit_key,
    )
    assert app.state.api_audit.inline is False
    codes = _concurrent_predicts(app, key, range(1, 17))
    assert set(codes.values()) == {200}
    pub = AuditSigner.public_key_path(audit_key)
    report = verify(postgres_url, "api", {AuditSigner.load(audit_key).key_id: pub.read_text()})
    assert report.ok and report.entries == 16, report.message
    assert app.state.api_audit.writer.batches <= 16
