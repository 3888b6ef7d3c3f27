"""Tamper-evident audit logs on SQLite and PostgreSQL: chain, signatures, checkpoints, queries,
update digests and the node/coordinator cross-check.

Tampering is done the way an intruder with database access would: raw SQL on the table. The
PostgreSQL variant needs the server CI starts (ATOLL_TEST_PG_URL, default in conftest.py); if it is
unreachable these tests FAIL on purpose — a skipped database test proves nothing.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flwr.app import ArrayRecord
from flwr.common import serde
from sqlalchemy import text
from typer.testing import CliRunner

from atoll.cli_audit import audit_app
from common.db import make_engine
from privacy.audit import (
    GENESIS_HASH,
    REPLY_SENT,
    ROUND_REPLY,
    AuditEntry,
    AuditKeyError,
    AuditLog,
    AuditReadError,
    AuditSigner,
    AuditWriteError,
    Checkpoint,
    Problem,
    crosscheck,
    digest_arrays,
    entry_hash,
    export_checkpoint,
    export_jsonl,
    json_number,
    load_public_keys,
    query,
    read_jsonl,
    verify,
    verify_entries,
)
from privacy.audit_models import AuditEntryRow
from privacy.models import PrivacyBase
from privacy.store import open_privacy_db

LOG = "coordinator"
CANARY = "canary-7Q2xZ"  # stands in for a feature value or customer id


# ---- backends ----------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def signer() -> AuditSigner:
    return AuditSigner.generate()


def keys(*signers: AuditSigner) -> dict[str, str]:
    return {s.key_id: s.public_key_pem for s in signers}


def write_log(url: str, signer: AuditSigner, n: int = 20, log_id: str = LOG) -> list[AuditEntry]:
    with AuditLog(url, log_id, signer) as log:
        return [
            log.append(
                "service:coordinator",
                "round.reply",
                "run:1",
                {"round": i, "node": "north", "examples": 100 + i, "epsilon": 0.25 * i},
            )
            for i in range(1, n + 1)
        ]


def sql(url: str, *statements: str, **params: Any) -> None:
    """Raw SQL in one transaction: how an intruder with database access edits the log."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement), params)
    finally:
        engine.dispose()


def move_seqs(url: str, first: int, by: int) -> None:
    """Shift every seq >= first by `by`, in two steps so UNIQUE(log_id, seq) never collides."""
    sql(
        url,
        "UPDATE audit_entries SET seq = -seq WHERE log_id = :log AND seq >= :first",
        "UPDATE audit_entries SET seq = -seq + :by WHERE log_id = :log AND seq < 0",
        log=LOG,
        first=first,
        by=by,
    )


# ---- the chain verifies, and every kind of tampering is named ---------------------------------


def test_concurrent_writers_never_fork(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    signers = [AuditSigner.generate(), AuditSigner.generate()]
    logs = [AuditLog(db_url, LOG, s) for s in signers]  # own engines: real lock contention
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def writer(log: AuditLog, name: str) -> None:
        start.wait()
        try:
            for i in range(100):
                log.append(f"node:{name}", "reply.sent", "run:9", {"round": i})
        except BaseException as exc:  # surfaced below; a thread would swallow it
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(log, f"w{i}")) for i, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.close()
    assert failures == []
    # the writers' lock serialised them: no append needed the UNIQUE(log_id, seq) retry
    assert not [r for r in caplog.records if "seq taken" in r.getMessage()]
    report = verify(db_url, LOG, keys(*signers))
    assert report.ok, report.message
    assert (report.entries, report.last_seq) == (200, 200)
    assert sorted(report.signers.values()) == [100, 100]
    entries = query(db_url, LOG, limit=None)
    assert [e.seq for e in entries] == list(range(1, 201))
    assert len({e.prev_hash for e in entries}) == 200  # no two entries follow the same parent
    assert entries[0].prev_hash == GENESIS_HASH


def test_fresh_log_verifies(db_url: str, signer: AuditSigner) -> None:
    entries = write_log(db_url, signer)
    report = verify(db_url, LOG, keys(signer))
    assert report.ok and report.problem is None and report.first_bad_seq is None
    assert (report.entries, report.last_seq, report.last_hash) == (20, 20, entries[-1].hash)
    assert all(b.prev_hash == a.hash for a, b in zip(entries, entries[1:], strict=False))
    empty = verify(db_url, "node:nobody", keys(signer))
    assert empty.ok and empty.entries == 0


def test_modified_entry_is_named(db_url: str, signer: AuditSigner) -> None:
    write_log(db_url, signer)
    sql(
        db_url,
        "UPDATE audit_entries SET details = :d WHERE log_id = :log AND seq = 7",
        d='{"epsilon":0.0,"examples":107,"node":"north","round":7}',
        log=LOG,
    )
    report = verify(db_url, LOG, keys(signer))
    assert (report.ok, report.problem, report.first_bad_seq) == (False, Problem.MODIFIED, 7)
    assert report.entries == 6 and "seq 7" in report.message


def test_modified_and_rehashed_entry_fails_its_signature(db_url: str, signer: AuditSigner) -> None:
    entries = write_log(db_url, signer)
    victim = entries[11]
    details = {**victim.details, "examples": 1}
    forged_hash = entry_hash(
        log_id=LOG,
        seq=victim.seq,
        ts=victim.ts,
        actor=victim.actor,
        action=victim.action,
        subject=victim.subject,
        details=details,
        prev_hash=victim.prev_hash,
        key_id=victim.key_id,
    )
    sql(
        db_url,
        "UPDATE audit_entries SET details = :d, hash = :h WHERE log_id = :log AND seq = 12",
        d=json.dumps(details),
        h=forged_hash,
        log=LOG,
    )
    report = verify(db_url, LOG, keys(signer))
    assert (report.problem, report.first_bad_seq) == (Problem.BAD_SIGNATURE, 12)


def test_deleted_entry_is_named(db_url: str, signer: AuditSigner) -> None:
    write_log(db_url, signer)
    sql(db_url, "DELETE FROM audit_entries WHERE log_id = :log AND seq = 5", log=LOG)
    report = verify(db_url, LOG, keys(signer))
    assert (report.problem, report.first_bad_seq, report.entries) == (Problem.DELETED, 5, 4)
    # Renumbering the rest to close the gap does not hide it: the entry now at 5 was written as 6.
    move_seqs(db_url, 6, -1)
    report = verify(db_url, LOG, keys(signer))
    assert (report.problem, report.first_bad_seq) == (Problem.REORDERED, 5)
    assert "written as seq 6" in report.message


def test_reordered_entries_are_named(db_url: str, signer: AuditSigner) -> None:
    write_log(db_url, signer)
    sql(
        db_url,
        "UPDATE audit_entries SET seq = -8 WHERE log_id = :log AND seq = 8",
        "UPDATE audit_entries SET seq = 8 WHERE log_id = :log AND seq = 9",
        "UPDATE audit_entries SET seq = 9 WHERE log_id = :log AND seq = -8",
        log=LOG,
    )
    report = verify(db_url, LOG, keys(signer))
    assert (report.problem, report.first_bad_seq) == (Problem.REORDERED, 8)
    assert "written as seq 9" in report.message


def test_inserted_forgery_without_valid_signature_is_named(
    db_url: str, signer: AuditSigner
) -> None:
    entries = write_log(db_url, signer)
    move_seqs(db_url, 10, 1)  # make room at seq 10, as an intruder would
    row = {
        "log_id": LOG,
        "seq": 10,
        "ts": entries[9].ts,
        "actor": "operator",
        "action": "model.published",
        "subject": "model:churn/v9",
        "details": {"participants": 3},
        "prev_hash": entries[8].hash,
        "key_id": signer.key_id,  # claims to be the real writer
    }
    forged_hash = entry_hash(**row)
    sql(
        db_url,
        "INSERT INTO audit_entries (log_id, seq, ts, actor, action, subject, details, prev_hash,"
        " hash, signature, key_id) VALUES (:log_id, :seq, :ts, :actor, :action, :subject,"
        " :details, :prev_hash, :hash, :signature, :key_id)",
        **{**row, "details": json.dumps(row["details"])},
        hash=forged_hash,
        signature=os.urandom(64).hex(),
    )
    report = verify(db_url, LOG, keys(signer))
    assert (report.problem, report.first_bad_seq, report.entries) == (
        Problem.BAD_SIGNATURE,
        10,
        9,
    )


def test_inserted_entry_signed_by_unknown_key_is_named(db_url: str, signer: AuditSigner) -> None:
    write_log(db_url, signer)
    intruder = AuditSigner.generate()
    # Someone with database access and their own key inserts at seq 10: park the tail (shifted
    # by one) out of the log, append (links to seq 9 and hashes correctly), put the tail back.
    sql(
        db_url,
        "UPDATE audit_entries SET log_id = 'parked', seq = seq + 1 "
        "WHERE log_id = :log AND seq >= 10",
        log=LOG,
    )
    with AuditLog(db_url, LOG, intruder) as log:
        inserted = log.append("operator", "policy.changed", "policy:budget", {"max_epsilon": 9})
    sql(db_url, "UPDATE audit_entries SET log_id = :log WHERE log_id = 'parked'", log=LOG)
    assert inserted.seq == 10
    report = verify(db_url, LOG, keys(signer))
    assert (report.problem, report.first_bad_seq, report.entries) == (Problem.UNKNOWN_KEY, 10, 9)
    # A forged tail entry signed by an unknown key is caught the same way.
    sql(db_url, "DELETE FROM audit_entries WHERE log_id = :log AND seq >= 10", log=LOG)
    with AuditLog(db_url, LOG, intruder) as log:
        log.append("operator", "model.published", "model:churn/v9", {"participants": 3})
    report = verify(db_url, LOG, keys(signer))
    assert (report.problem, report.first_bad_seq) == (Problem.UNKNOWN_KEY, 10)


# ---- checkpoints -------------------------------------------------------------------------------


def test_tail_truncation_below_checkpoint_is_named(
    db_url: str, signer: AuditSigner, tmp_path: Path
) -> None:
    write_log(db_url, signer)
    path = tmp_path / "kept-elsewhere" / "checkpoint.json"
    mark = export_checkpoint(db_url, LOG, signer, path)
    assert (mark.count, mark.last_seq) == (20, 20)
    assert Checkpoint.load(path) == mark
    assert verify(db_url, LOG, keys(signer), mark).ok
    sql(db_url, "DELETE FROM audit_entries WHERE log_id = :log AND seq >= 18", log=LOG)
    assert verify(db_url, LOG, keys(signer)).ok  # the chain alone cannot see a cut tail
    report = verify(db_url, LOG, keys(signer), Checkpoint.load(path))
    assert (report.problem, report.first_bad_seq, report.entries) == (Problem.TRUNCATED, 18, 17)
    # Truncated, then regrown by the writer past the checkpoint: the entry at seq 20 differs.
    with AuditLog(db_url, LOG, signer) as log:
        for _ in range(5):
            log.append("service:coordinator", "run.finished", "run:1")
    report = verify(db_url, LOG, keys(signer), mark)
    assert (report.problem, report.first_bad_seq) == (Problem.TRUNCATED, 20)


def test_bad_checkpoints_are_rejected(db_url: str, signer: AuditSigner, tmp_path: Path) -> None:
    write_log(db_url, signer, n=5)
    with AuditLog(db_url, LOG, signer) as log:
        mark = log.checkpoint()
    assert mark.problem(LOG, keys(signer)) is None
    lowered = Checkpoint.model_validate({**mark.model_dump(), "count": 3, "last_seq": 3})
    report = verify(db_url, LOG, keys(signer), lowered)
    assert (report.ok, report.problem) == (False, Problem.BAD_CHECKPOINT)
    assert "signature is invalid" in report.message
    stranger = AuditSigner.generate()
    forged = export_checkpoint(db_url, LOG, stranger)
    report = verify(db_url, LOG, keys(signer), forged)
    assert report.problem == Problem.BAD_CHECKPOINT and "unknown key" in report.message
    other_log = verify(db_url, "node:north", keys(signer), mark)
    assert other_log.problem == Problem.BAD_CHECKPOINT
    garbage = tmp_path / "cp.json"
    garbage.write_text('{"log_id": "coordinator"}')
    with pytest.raises(AuditReadError, match="not an audit checkpoint"):
        Checkpoint.load(garbage)


# ---- what goes in an entry ---------------------------------------------------------------------


def test_entries_hold_only_what_the_caller_passed(db_url: str, signer: AuditSigner) -> None:
    details = {"records": 3, "route": "/models/churn/predict", "status": 200, "ms": 1.5}
    with AuditLog(db_url, "api", signer) as log:
        entry = log.append("apikey:ak_123", "api.predict", "model:churn/v2", details)
        rejected = [
            {"customer": {"email": {CANARY}}},  # not JSON
            {"score": float("nan")},
            {"tenure": [1, float("inf")]},
            {7: CANARY},
        ]
        messages = []
        for bad in rejected:
            with pytest.raises(AuditWriteError) as err:
                log.append("apikey:ak_123", "api.predict", "model:churn/v2", bad)
            messages.append(str(err.value))
        with pytest.raises(AuditWriteError, match="at most 300") as err:
            log.append("apikey:ak_123", "api.predict", CANARY * 50)
        messages.append(str(err.value))
        with pytest.raises(AuditWriteError, match="dotted lowercase"):
            log.append("apikey:ak_123", "Predict", "model:churn/v2")
        # numpy numbers (metrics) are stored as plain numbers, ε = inf through json_number
        numeric = log.append(
            "service:coordinator",
            "round.reply",
            "run:1",
            {"examples": np.int64(5), "epsilon": json_number(np.float64("inf")), "p": (1, 2)},
        )
    assert "details.customer.email is a set" in messages[0]
    assert "details.score is NaN or infinite" in messages[1]
    assert "details.tenure[1]" in messages[2]
    assert all(CANARY not in m for m in messages)
    assert numeric.details == {"examples": 5, "epsilon": "Infinity", "p": [1, 2]}
    engine = make_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM audit_entries ORDER BY seq")).mappings().all()
    engine.dispose()
    assert len(rows) == 2  # nothing of a rejected append was stored
    row = rows[0]
    assert json.loads(row["details"]) == details == entry.details
    assert (row["log_id"], row["actor"], row["action"], row["subject"]) == (
        "api",
        "apikey:ak_123",
        "api.predict",
        "model:churn/v2",
    )
    generated = {k: row[k] for k in ("prev_hash", "hash", "signature", "key_id")}
    assert all(set(v) <= set("0123456789abcdef") for v in generated.values())
    assert CANARY not in json.dumps([dict(r) for r in rows], default=str)


def test_failed_write_raises_and_records_nothing(db_url: str, signer: AuditSigner) -> None:
    log = AuditLog(db_url, LOG, signer)
    log.append("operator", "run.submitted", "run:1", {"rounds": 3})
    sql(db_url, "DROP TABLE audit_entries")
    with pytest.raises(AuditWriteError, match="must not proceed unrecorded") as err:
        log.append("operator", "run.started", "run:1", {"rounds": 3})
    assert "run.started" in str(err.value)
    log.close()
    with pytest.raises(AuditWriteError, match="cannot open audit database"):
        AuditLog("postgresql+psycopg://postgres@127.0.0.1:1/none", LOG, signer)


# ---- query and export --------------------------------------------------------------------------


def test_query_filters_and_jsonl_round_trip(
    db_url: str, signer: AuditSigner, tmp_path: Path
) -> None:
    with AuditLog(db_url, LOG, signer) as log:
        log.append("service:coordinator", "run.started", "run:1", {"rounds": 2})
        for rnd in (1, 2):
            for node in ("north", "south"):
                log.append(
                    "service:coordinator", ROUND_REPLY, "run:1", {"round": rnd, "node": node}
                )
        log.append("apikey:ak_1", "api.predict", "model:churn/v1", {"records": 2})
        log.append("apikey:akx1", "api.predict", "model:churn/v1", {"records": 4})
        log.append("operator", "model.published", "model:churn/v1", {"participants": 2})
    with AuditLog(db_url, "node:north", signer) as other:  # another log in the same database
        other.append("node:north", REPLY_SENT, "run:1", {"round": 1})
    everything = query(db_url, LOG)
    assert len(everything) == 8
    assert [e.seq for e in query(db_url, LOG, action=ROUND_REPLY)] == [2, 3, 4, 5]
    assert [e.seq for e in query(db_url, LOG, action="round.*")] == [2, 3, 4, 5]
    # '_' in a prefix is literal, not a LIKE wildcard
    assert [e.seq for e in query(db_url, LOG, actor="apikey:ak_*")] == [6]
    assert [e.seq for e in query(db_url, LOG, subject="model:churn/*")] == [6, 7, 8]
    assert [e.seq for e in query(db_url, LOG, subject="run:1", limit=2)] == [1, 2]
    assert [e.seq for e in query(db_url, LOG, limit=2, newest_first=True)] == [8, 7]
    cut = everything[4].timestamp
    assert [e.seq for e in query(db_url, LOG, since=cut)] == [
        e.seq for e in everything if e.timestamp >= cut
    ]
    assert [e.seq for e in query(db_url, LOG, until=cut)] == [
        e.seq for e in everything if e.timestamp < cut
    ]
    full = tmp_path / "export" / "coordinator.jsonl"
    assert export_jsonl(db_url, LOG, full) == 8
    exported = list(read_jsonl(full))
    assert exported == everything
    assert verify_entries(exported, LOG, keys(signer)).ok
    lines = full.read_text().splitlines()
    assert '"node":"south"' in lines[2]  # seq 3
    lines[2] = lines[2].replace('"node":"south"', '"node":"west"')
    full.write_text("\n".join(lines) + "\n")
    offline = verify_entries(read_jsonl(full), LOG, keys(signer))
    assert (offline.problem, offline.first_bad_seq) == (Problem.MODIFIED, 3)
    filtered = tmp_path / "predict.jsonl"
    assert export_jsonl(db_url, LOG, filtered, action="api.predict") == 2
    assert {json.loads(x)["action"] for x in filtered.read_text().splitlines()} == {"api.predict"}


# ---- keys --------------------------------------------------------------------------------------


def test_signer_key_files(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit" / "coordinator.pem"
    signer = AuditSigner.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert signer.key_id not in repr(signer) and "PRIVATE" not in repr(signer)
    loaded = AuditSigner.load(path)
    assert loaded.key_id == signer.key_id
    assert load_public_keys([AuditSigner.public_key_path(path)]) == keys(signer)
    assert AuditSigner.load_or_create(path).key_id == signer.key_id
    with pytest.raises(AuditKeyError, match="already exists"):
        AuditSigner.create(path)
    path.chmod(0o644)
    with pytest.raises(AuditKeyError, match="readable by other users"):
        AuditSigner.load(path)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(AuditKeyError, match="accessible to other users"):
        AuditSigner.create(shared / "k.pem")
    other = AuditSigner.generate()
    with pytest.raises(AuditKeyError, match="fingerprint"):
        verify_entries([], LOG, {signer.key_id: other.public_key_pem})


# ---- update digests and the cross-check ---------------------------------------------------------


def _update(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {"0.weight": torch.randn(1, 5), "0.bias": torch.randn(1)}


def test_digest_is_the_same_on_both_sides_of_the_wire() -> None:
    state = _update(1)
    sent = digest_arrays(state)  # node: the state dict it puts in its reply
    wire = serde.array_record_to_proto(ArrayRecord(state)).SerializeToString()
    proto = type(serde.array_record_to_proto(ArrayRecord({})))()
    proto.ParseFromString(wire)
    received = serde.array_record_from_proto(proto)  # coordinator: the ArrayRecord it got
    assert digest_arrays(received) == sent
    as_numpy = {k: v.numpy() for k, v in reversed(state.items())}
    assert digest_arrays(as_numpy) == sent  # names are sorted, order does not matter
    big_endian = {k: v.astype(">f4") for k, v in as_numpy.items()}
    assert digest_arrays(big_endian) == sent  # same values, same digest
    flipped = {k: v.clone() for k, v in state.items()}
    flipped["0.weight"].view(torch.int32)[0, 3] ^= 1  # one bit of one float
    assert digest_arrays(flipped) != sent
    assert digest_arrays({k: v.double() for k, v in state.items()}) != sent
    assert digest_arrays({k: v.reshape(-1) for k, v in state.items()}) != sent
    renamed = {"0.weight": state["0.bias"], "0.bias": state["0.weight"]}
    assert digest_arrays(renamed) != sent
    assert len(sent) == 64 and set(sent) <= set("0123456789abcdef")


def _run(
    url: str, coordinator: AuditSigner, node: AuditSigner, tamper_round: int | None = None
) -> None:
    """Three rounds with two nodes; the node log is north's own. Digests are real."""
    with AuditLog(url, LOG, coordinator) as coord, AuditLog(url, "node:north", node) as north:
        for rnd in (1, 2, 3):
            for name in ("north", "south"):
                update = _update(rnd * 10 + len(name))
                reply = {
                    "run": "42",
                    "round": rnd,
                    "node": name,
                    "kind": "train",
                    "update_sha256": digest_arrays(update),
                    "examples": 800,
                    "epsilon": json_number(0.3 * rnd),
                }
                if name == "north":
                    north.append("node:north", REPLY_SENT, "run:42", reply)
                received = dict(reply)
                if rnd == tamper_round and name == "north":
                    received["update_sha256"] = digest_arrays(_update(999))
                coord.append(
                    "service:coordinator", ROUND_REPLY, "run:42", {**received, "node_id": 7}
                )


def test_crosscheck_agrees_then_finds_tampering(db_url: str) -> None:
    coordinator, node = AuditSigner.generate(), AuditSigner.generate()
    _run(db_url, coordinator, node)
    assert crosscheck(query(db_url, LOG), query(db_url, "node:north")) == []
    sql(db_url, "DELETE FROM audit_entries")
    _run(db_url, coordinator, node, tamper_round=2)
    # the node lost (or never sent) its round-3 reply; the coordinator has no round-1 record
    sql(
        db_url,
        "DELETE FROM audit_entries WHERE log_id = 'node:north' AND seq = 3",
    )
    sql(db_url, "DELETE FROM audit_entries WHERE log_id = :log AND seq = 1", log=LOG)
    found = crosscheck(query(db_url, LOG), query(db_url, "node:north"))
    summary = [(m.round, m.node, m.problem, m.field) for m in found]
    assert summary == [
        (1, "north", "missing_on_coordinator", None),
        (2, "north", "differs", "update_sha256"),
        (3, "north", "missing_on_node", None),
    ]  # south is not compared: its own log was not given
    differs = found[1]
    assert differs.coordinator_value == digest_arrays(_update(999))
    assert differs.node_value == digest_arrays(_update(25))
    assert (differs.coordinator_seq, differs.node_seq) == (3, 2)
    assert "update_sha256 differs" in differs.describe()
    assert crosscheck(query(db_url, LOG), query(db_url, "node:north"), run="other") == []


# ---- command line ------------------------------------------------------------------------------


def test_cli_verify_checkpoint_export_crosscheck(db_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    key = tmp_path / "keys" / "coordinator.pem"
    assert runner.invoke(audit_app, ["keygen", str(key)]).exit_code == 0
    pub = str(AuditSigner.public_key_path(key))
    coordinator = AuditSigner.load(key)
    node = AuditSigner.generate()
    _run(db_url, coordinator, node)
    base = ["--db", db_url, "--log", LOG]

    result = runner.invoke(audit_app, ["verify", *base, "--public-key", pub, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["entries"] == 6
    mark = tmp_path / "cp.json"
    cp_args = ["checkpoint", *base, "--key", str(key), "--out", str(mark)]
    result = runner.invoke(audit_app, cp_args)
    assert result.exit_code == 2 and "--public-key" in result.output  # keys are pinned, always
    result = runner.invoke(audit_app, [*cp_args, "--public-key", pub])
    assert result.exit_code == 0, result.output
    assert Checkpoint.load(mark).last_seq == 6

    out = tmp_path / "all.jsonl"
    result = runner.invoke(audit_app, ["export", *base, "--out", str(out)])
    assert result.exit_code == 0 and len(out.read_text().splitlines()) == 6
    result = runner.invoke(audit_app, ["verify", "--jsonl", str(out), "--public-key", pub])
    assert result.exit_code == 0, result.output
    result = runner.invoke(audit_app, ["show", *base, "--action", "round.*", "--limit", "2"])
    assert result.exit_code == 0 and "round.reply" in result.stdout

    sql(db_url, "DELETE FROM audit_entries WHERE log_id = :log AND seq >= 5", log=LOG)
    verify_args = ["verify", *base, "--public-key", pub, "--checkpoint", str(mark), "--json"]
    result = runner.invoke(audit_app, verify_args)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["problem"], report["first_bad_seq"]) == ("truncated", 5)

    cross = ["crosscheck", "--coordinator-db", db_url, "--node-db", db_url]
    result = runner.invoke(audit_app, [*cross, "--node-log", "node:north", "--json"])
    assert result.exit_code == 1
    assert [m["round"] for m in json.loads(result.stdout)] == [3]

    result = runner.invoke(audit_app, ["verify", *base, "--public-key", str(tmp_path / "no.pub")])
    assert result.exit_code == 2 and "cannot read public key" in result.stderr


# ---- schema ------------------------------------------------------------------------------------


def test_migration_matches_the_model(db_url: str) -> None:
    engine = open_privacy_db(db_url)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), PrivacyBase.metadata)
            heads = set(
                conn.execute(text("SELECT version_num FROM alembic_version_privacy")).scalars()
            )
    finally:
        engine.dispose()
    assert AuditEntryRow.__tablename__ == "audit_entries"
    assert [d for d in diffs if "audit_entries" in repr(d)] == []
    assert "p002_audit" in heads
