"""Coordinator hardening, API side: verification never trusts what it verifies, unauthenticated
traffic is cheap, /health says only "alive", and `atoll serve` will not speak plain HTTP to the
network by accident.

Tampering is done the way an intruder on the coordinator host would: raw SQL on the audit table,
a replaced key file, a log re-signed with it. What catches it is configuration kept elsewhere —
public keys pinned in the verifier's settings and signed checkpoints in a separate directory.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers.api import logreg_weights, publish, publisher_pub
from sqlalchemy import event
from typer.testing import CliRunner

from atoll.cli import app as atoll_cli
from atoll.cli_audit import audit_app
from atoll.cli_keys import keys_app
from privacy.audit import (
    AuditKeyError,
    AuditLog,
    AuditSigner,
    Checkpoint,
    Checkpointer,
    CheckpointPolicy,
    Problem,
    latest_checkpoint,
    load_public_keys,
    log_length,
    query,
    verify,
)
from server.api.app import create_app
from server.api.audit_trail import key_change_recorder, operator_log
from server.api.auth import ApiKeyError, ApiKeyStore, client_address, parse_key
from server.api.auth_failures import AuthFailureTally
from server.api.limits import TokenBucketLimiter
from server.api.settings import ApiSettings
from server.registry import Registry

pytestmark = pytest.mark.hardening
ADMIN_ENTRIES = 11  # key changes the deployment fixture makes (each is an admin log entry)


def _said(result: Any) -> str:
    """A CLI result's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _registry(tmp: Path) -> str:
    url = f"sqlite:///{tmp / 'coordinator' / 'registry.db'}"
    (tmp / "coordinator").mkdir(parents=True, exist_ok=True)
    with Registry(url) as registry:
        publish(registry, "toy", "logreg", logreg_weights([1.0, 0, 0, 0, 0, 0], 0.0))
    return url


def _db(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def _sql(url: str, statement: str, **params: Any) -> None:
    with sqlite3.connect(_db(url)) as conn:
        conn.execute(statement, params)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Deployment:
    """A coordinator API as deployed: keys created up front, their .pub files pinned in the
    verifier's configuration (a separate directory), checkpoints in another one."""

    tmp: Path
    url: str
    api_key: Path
    operator_key: Path
    pinned: Path  # the verifier's copies of the public keys
    checkpoints: Path
    keys: dict[str, str]

    @property
    def api_pub(self) -> Path:
        return self.pinned / "api.pub"

    @property
    def admin_pub(self) -> Path:
        return self.pinned / "operator.pub"

    def app(self, **overrides: Any):
        options: dict[str, Any] = {
            "rate_per_second": 1000,
            "rate_burst": 1000,
            "audit_key": self.api_key,
            "api_public_keys": [self.api_pub],
            "admin_public_keys": [self.admin_pub],
            "checkpoint_dir": self.checkpoints,
            "checkpoint_every_entries": 5,
            "checkpoint_every_minutes": 60,
            "maintenance_seconds": 3600,  # the tests drive maintenance by hand
            "registry_public_keys": [publisher_pub()],
        }
        return create_app(self.url, **(options | overrides))


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    url = _registry(tmp_path)
    audit_dir = tmp_path / "coordinator" / "audit"
    api_key, operator_key = audit_dir / "api.pem", audit_dir / "operator.pem"
    pinned = tmp_path / "verifier-config"
    pinned.mkdir()
    for key, pub in ((api_key, "api.pub"), (operator_key, "operator.pub")):
        AuditSigner.create(key)  # `atoll audit keygen`
        (pinned / pub).write_text(AuditSigner.public_key_path(key).read_text())
    recorder = key_change_recorder(url, operator_key)  # key changes go to the admin log
    with ApiKeyStore.open(url, on_event=recorder) as store:
        keys = {role: store.create(f"t-{role}", role)[1] for role in ("app", "analyst")}
        keys["governance"] = store.create("t-governance", "governance")[1]
        for i in range(4):  # a longer admin log
            store.revoke(store.create(f"old-{i}", "app")[0].key_id)
    return Deployment(
        tmp_path, url, api_key, operator_key, pinned, tmp_path / "offhost-checkpoints", keys
    )


def _calls(client: TestClient, d: Deployment, n: int) -> None:
    for _ in range(n):
        assert client.get("/models", headers=_bearer(d.keys["analyst"])).status_code == 200


def _verify(client: TestClient, d: Deployment, log: str, **params: str) -> dict[str, Any]:
    r = client.get(
        "/audit/verify", params={"log": log, **params}, headers=_bearer(d.keys["governance"])
    )
    assert r.status_code == 200, r.text
    return r.json()


# ---- A. verification never trusts what it verifies ----------------------------------------------


def test_deleted_tail_of_api_and_admin_logs_is_caught_by_a_checkpoint(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    d = deployment
    with TestClient(d.app()) as client:
        _calls(client, d, 12)
        client.app.state.audit_maintenance.tick()  # what the background task does
        latest_api = latest_checkpoint(d.checkpoints, "api")
        latest_admin = latest_checkpoint(d.checkpoints, "admin")
        assert latest_api is not None and latest_admin is not None
        assert latest_api[1].last_seq == log_length(d.url, "api") >= 12
        assert latest_admin[1].last_seq == log_length(d.url, "admin") == ADMIN_ENTRIES
        assert _verify(client, d, "api")["ok"] and _verify(client, d, "admin")["ok"]

        # The intruder deletes the newest entries of both logs.
        api_seq, admin_seq = latest_api[1].last_seq, latest_admin[1].last_seq
        _sql(d.url, "DELETE FROM audit_entries WHERE log_id = 'api' AND seq > :s", s=api_seq - 4)
        _sql(d.url, "DELETE FROM audit_entries WHERE log_id = 'admin' AND seq > 8")
        pins = load_public_keys([d.api_pub])
        assert verify(d.url, "api", pins).ok  # the chain alone cannot see a cut tail

        for log, seq in (("api", api_seq), ("admin", admin_seq)):
            report = _verify(client, d, log)  # default: the newest checkpoint in the directory
            assert report["ok"] is False and report["problem"] == Problem.TRUNCATED, report
            assert report["checkpoint_seq"] == seq
            assert report["checkpoint_file"] == f"{log}.{seq:012d}.json"
        assert _verify(client, d, "admin", checkpoint="none")["ok"]  # explicitly without one
        name = f"admin.{admin_seq:012d}.json"
        assert _verify(client, d, "admin", checkpoint=name)["problem"] == Problem.TRUNCATED
        missing = client.get(
            "/audit/verify",
            params={"log": "api", "checkpoint": "nope.json"},
            headers=_bearer(d.keys["governance"]),
        )
        assert missing.status_code == 404

        # The API refuses to checkpoint over the cut: the old checkpoint stays the newest.
        before = sorted(p.name for p in d.checkpoints.iterdir())
        _calls(client, d, 6)
        client.app.state.audit_maintenance.tick()
        assert sorted(p.name for p in d.checkpoints.iterdir()) == before
        assert "truncated or rewritten" in caplog.text

    # Offline, with the checkpoint directory and the pinned keys: the same verdict, exit 1.
    runner = CliRunner()
    for log, pub in (("api", d.api_pub), ("admin", d.admin_pub)):
        args = ["verify", "--db", d.url, "--log", log, "--public-key", str(pub)]
        args += ["--checkpoint", str(d.checkpoints), "--checkpoint-public-key", str(d.api_pub)]
        result = runner.invoke(audit_app, [*args, "--json"])
        assert result.exit_code == 1, result.output
        assert json.loads(result.stdout)["problem"] == "truncated"


def test_an_emptied_log_fails_when_a_checkpoint_expects_entries(deployment: Deployment) -> None:
    d = deployment
    with TestClient(d.app()) as client:
        _calls(client, d, 3)
    mark = latest_checkpoint(d.checkpoints, "admin")  # written at shutdown
    assert mark is not None and mark[1].last_seq == ADMIN_ENTRIES
    _sql(d.url, "DELETE FROM audit_entries WHERE log_id = 'admin'")
    pins = load_public_keys([d.admin_pub])
    assert verify(d.url, "admin", pins).ok  # an empty log verifies... on its own
    report = verify(d.url, "admin", pins, mark[1], checkpoint_keys=load_public_keys([d.api_pub]))
    assert (report.ok, report.problem, report.first_bad_seq) == (False, Problem.TRUNCATED, 1)
    assert f"checkpoint vouches for {ADMIN_ENTRIES} entries" in report.message
    result = CliRunner().invoke(
        audit_app,
        ["verify", "--db", d.url, "--log", "admin", "--public-key", str(d.admin_pub)]
        + ["--checkpoint", str(mark[0]), "--checkpoint-public-key", str(d.api_pub)],
    )
    assert result.exit_code == 1 and "truncated" in result.stdout


def _resign(url: str, log_id: str, forger: AuditSigner) -> int:
    """Rewrite a whole log with another key: a consistent chain, every signature valid."""
    entries = query(url, log_id, limit=None)
    _sql(url, "DELETE FROM audit_entries WHERE log_id = :log", log=log_id)
    with AuditLog(url, log_id, forger) as log:
        for e in entries:
            log.append(e.actor, e.action, e.subject, e.details)
    return len(entries)


def test_replaced_key_and_re_signed_log_fail_against_the_pinned_key(
    deployment: Deployment,
) -> None:
    d = deployment
    with TestClient(d.app(checkpoint_dir=None)) as client:
        _calls(client, d, 4)
        # The intruder replaces both signing keys (and the .pub beside them) and re-signs the
        # logs: a consistent chain, every signature valid — under the intruder's key.
        for key, log_id in ((d.api_key, "api"), (d.operator_key, "admin")):
            key.unlink()
            _pub_of(key).unlink()
            forger = AuditSigner.create(key)
            assert _resign(d.url, log_id, forger) >= 4
            # Against the key beside the log the forgery "verifies": why it is never used.
            assert verify(d.url, log_id, load_public_keys([_pub_of(key)])).ok
        # The running API verifies with the pinned keys only, and names the forgery.
        for log_id in ("api", "admin"):
            report = _verify(client, d, log_id)
            assert (report["problem"], report["first_bad_seq"]) == ("unknown_key", 1), report
    for log_id, pub in (("api", d.api_pub), ("admin", d.admin_pub)):
        report = verify(d.url, log_id, load_public_keys([pub]))
        assert (report.problem, report.first_bad_seq) == (Problem.UNKNOWN_KEY, 1)
        result = CliRunner().invoke(
            audit_app, ["verify", "--db", d.url, "--log", log_id, "--public-key", str(pub)]
        )
        assert result.exit_code == 1 and "unknown_key" in result.stdout

    # On restart the API will not sign with a key its pinned public keys do not vouch for.
    with pytest.raises(AuditKeyError, match="not one of the 1 pinned public key"):
        d.app()
    result = CliRunner().invoke(
        atoll_cli,
        ["serve", "--registry", d.url, "--audit-key", str(d.api_key)]
        + ["--api-audit-public-key", str(d.api_pub), "--registry-public-key", str(publisher_pub())],
    )
    assert result.exit_code == 2 and "not one of the 1 pinned public key" in _said(result)
    assert "Traceback" not in result.output


def _pub_of(key: Path) -> Path:
    return AuditSigner.public_key_path(key)


def test_without_pinned_keys_the_api_does_not_trust_its_own_key_file(tmp_path: Path) -> None:
    url = _registry(tmp_path)
    with ApiKeyStore.open(url) as store:
        gov = store.create("gov", "governance")[1]
    with TestClient(create_app(url, registry_public_keys=[publisher_pub()])) as client:
        for _ in range(2):
            report = client.get("/audit/verify?log=api", headers=_bearer(gov)).json()
        assert report["ok"] is False and report["problem"] == "unknown_key"
        assert "--api-audit-public-key" in report["message"]


def test_missing_api_key_is_created_only_for_an_empty_log(tmp_path: Path) -> None:
    url = _registry(tmp_path)
    key = tmp_path / "coordinator" / "audit" / "api.pem"
    with ApiKeyStore.open(url) as store:
        analyst = store.create("a", "analyst")[1]
    assert not key.exists()
    app = create_app(url, registry_public_keys=[publisher_pub()])
    with TestClient(app) as client:  # first start, empty log: the key is created
        assert key.exists()
        assert client.get("/models", headers=_bearer(analyst)).status_code == 200
    assert log_length(url, "api") == 1

    key.unlink()  # lost (or removed to slip a new one in)
    with pytest.raises(AuditKeyError, match=r"is missing but log 'api' already holds 1 entries"):
        create_app(url, registry_public_keys=[publisher_pub()])
    assert not key.exists()  # not silently re-created beside the registry
    pinned_registry = ["--registry-public-key", str(publisher_pub())]
    result = CliRunner().invoke(atoll_cli, ["serve", "--registry", url, *pinned_registry])
    assert result.exit_code == 2
    assert "is missing but log 'api' already holds 1 entries" in _said(result)
    assert "restore the key" in _said(result) and not key.exists()

    # With pinned keys a missing key is never created, even for an empty log.
    other = _registry(tmp_path / "other")
    pub = tmp_path / "pinned.pub"
    pub.write_text(AuditSigner.generate().public_key_pem)
    fresh = tmp_path / "other" / "k" / "api.pem"
    with pytest.raises(AuditKeyError, match="missing and public keys are pinned"):
        create_app(
            other, registry_public_keys=[publisher_pub()], audit_key=fresh, api_public_keys=[pub]
        )
    assert not fresh.exists()


def test_missing_operator_key_with_admin_entries_is_an_error(deployment: Deployment) -> None:
    d = deployment
    d.operator_key.unlink()
    with pytest.raises(AuditKeyError, match=f"log 'admin' already holds {ADMIN_ENTRIES} entries"):
        operator_log(d.url, d.operator_key)
    with pytest.raises(ApiKeyError, match=f"log 'admin' already holds {ADMIN_ENTRIES} entries"):
        key_change_recorder(d.url, d.operator_key)
    assert not d.operator_key.exists()
    # `atoll apikey create` uses the default operator key beside the registry: same rule.
    default = d.tmp / "coordinator" / "audit" / "operator.pem"
    assert default == d.operator_key
    result = CliRunner().invoke(
        keys_app, ["create", "--name", "x", "--role", "app", "--registry", d.url]
    )
    assert result.exit_code == 2 and f"already holds {ADMIN_ENTRIES} entries" in _said(result)
    assert not d.operator_key.exists()


def test_checkpoint_command_covers_every_log_into_a_directory(deployment: Deployment) -> None:
    d = deployment
    with TestClient(d.app(checkpoint_dir=None)) as client:
        _calls(client, d, 3)
    coordinator = d.tmp / "coordinator" / "audit" / "coordinator.pem"
    signer = AuditSigner.create(coordinator)
    with AuditLog(d.url, "coordinator", signer) as log:
        for i in range(3):
            log.append("service:coordinator", "round.reply", "run:1", {"round": i})
    operator_signer = d.tmp / "governance" / "checkpoint.pem"
    AuditSigner.create(operator_signer)
    out = d.tmp / "offhost"
    runner = CliRunner()
    args = ["checkpoint", "--db", d.url, "--key", str(operator_signer), "--out", str(out)]
    args += ["--all-logs", "--public-key", f"api={d.api_pub}"]
    args += ["--public-key", f"admin={d.admin_pub}"]
    args += ["--public-key", f"coordinator={_pub_of(coordinator)}"]
    result = runner.invoke(audit_app, args)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        f"admin.{ADMIN_ENTRIES:012d}.json",
        f"api.{log_length(d.url, 'api'):012d}.json",
        f"coordinator.{3:012d}.json",
    ]
    # A log that does not verify with its pinned key gets no checkpoint (exit 1).
    _sql(d.url, "UPDATE audit_entries SET details = '{}' WHERE log_id = 'coordinator' AND seq = 2")
    result = runner.invoke(audit_app, args)
    assert result.exit_code == 1 and "refusing to checkpoint log 'coordinator'" in _said(result)


def test_checkpointer_policy_by_count_and_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    signer = AuditSigner.generate()
    now = [0.0]
    policy = CheckpointPolicy(tmp_path / "cp", every_entries=10, every_seconds=60)
    with AuditLog(url, "node:north", signer) as log:
        cp = Checkpointer(log.engine, ["node:north"], signer, policy, clock=lambda: now[0])
        assert cp.run_due() == []  # empty log: nothing to vouch for
        for _ in range(9):
            log.append("node:north", "reply.sent", "run:1")
        assert cp.run_due() == []  # 9 < 10 entries, 0 s elapsed
        log.append("node:north", "reply.sent", "run:1")
        [first] = cp.run_due()
        assert Checkpoint.load(first).last_seq == 10
        log.append("node:north", "reply.sent", "run:1")
        now[0] = 59
        assert cp.run_due() == []
        now[0] = 61
        [second] = cp.run_due()
        assert Checkpoint.load(second).last_seq == 11
        assert cp.run_due(force=True) == []  # nothing new
        # A restarted writer picks up where the directory left off.
        again = Checkpointer(log.engine, ["node:north"], signer, policy)
        assert again.last("node:north") == Checkpoint.load(second)


# ---- B. unauthenticated traffic is cheap --------------------------------------------------------


def test_unauthenticated_flood_is_cheap_bounded_in_the_audit_log_and_spares_valid_callers(
    tmp_path: Path,
) -> None:
    url = _registry(tmp_path)
    with ApiKeyStore.open(url) as store:
        valid = store.create("crm", "analyst")[1]
        real_id = parse_key(store.create("victim", "app")[1])[0]  # type: ignore[index]
    app = create_app(
        url,
        registry_public_keys=[publisher_pub()],
        rate_per_second=1000,
        rate_burst=1000,
        maintenance_seconds=3600,
    )
    store = app.state.api_keys
    lookups = Counter[str]()
    authenticate = store.authenticate

    def counted(token: str) -> Any:
        lookups["valid" if token == valid else "bad"] += 1
        return authenticate(token)

    store.authenticate = counted  # what the gate calls for every well-formed key
    fake_secret = "A" * 43
    bad_headers = [
        {},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": f"Bearer atoll_{'0' * 12}_{fake_secret}"},
        {"Authorization": f"Bearer atoll_{real_id}_{fake_secret}"},
    ]
    n_bad = 10_000
    rows_before = log_length(url, "api")
    done = threading.Event()
    valid_codes: list[int] = []

    with TestClient(app, client=("203.0.113.9", 40000)) as attacker:
        # The valid caller, from its own address, on the same app and process.
        caller = TestClient(app, client=("198.51.100.7", 40001))

        def valid_caller() -> None:
            while not done.is_set():
                valid_codes.append(caller.get("/models", headers=_bearer(valid)).status_code)

        def bad(i: int) -> int:
            return attacker.get("/models", headers=bad_headers[i % len(bad_headers)]).status_code

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=9) as pool:
            valid_future = pool.submit(valid_caller)
            codes = Counter(pool.map(bad, range(n_bad), chunksize=50))
            done.set()
            valid_future.result()
        elapsed = time.monotonic() - t0
        tally = app.state.auth_failures
        assert tally.pending() >= 1  # counted in memory, not yet written
    # Leaving the client shut the app down: the tallies were flushed then.

    assert set(codes) <= {401, 429} and sum(codes.values()) == n_bad
    assert codes[429] > n_bad * 0.8, codes  # most of the flood never reached authentication
    assert valid_codes and set(valid_codes) == {200}, Counter(valid_codes)  # never a 5xx (or 429)
    # Key lookups for bad keys: the bucket's burst plus its rate over the flood, nothing more.
    assert lookups["bad"] <= 40 + 20 * elapsed + 5, (lookups, elapsed)

    entries = query(url, "api", limit=None, after_seq=rows_before)
    failures = [e for e in entries if e.action == "auth.failed"]
    others = [e for e in entries if e.action != "auth.failed"]
    assert {e.action for e in others} == {"api.model_read"}  # the valid caller's calls
    assert len(failures) <= 3  # one per (client, minute): the flood may straddle a minute
    assert len(entries) - len(valid_codes) <= 10  # bounded, whatever the flood's size
    assert {e.subject for e in failures} == {"client:203.0.113.9"}
    assert sum(e.details["count"] + e.details["throttled"] for e in failures) == n_bad
    reasons = Counter[str]()
    for e in failures:
        reasons.update(e.details["reasons"])
    assert set(reasons) <= {"no credentials", "malformed key", "unknown key", "wrong secret"}
    assert all(set(e.details["key_ids"]) <= {real_id} for e in failures)
    assert valid not in json.dumps([e.to_json_dict() for e in entries])


def test_auth_failure_tally_per_client_and_minute() -> None:
    now = [120.0]  # 00:02
    written: list[tuple[str, dict[str, Any]]] = []
    fail_next = [False]

    def write(client: str, details: dict[str, Any]) -> None:
        if fail_next[0]:
            fail_next[0] = False
            raise OSError("database down")
        written.append((client, details))

    tally = AuthFailureTally(write, max_clients_per_minute=2, clock=lambda: now[0])
    for _ in range(5):
        tally.failed("10.0.0.1", "wrong secret", "abcdefabcdef")
    tally.throttled("10.0.0.1")
    tally.failed("10.0.0.2", "no credentials")
    tally.failed("10.0.0.3", "malformed key")  # third address this minute: counted as "other"
    tally.failed("10.0.0.4", "malformed key")
    assert tally.flush() == 0  # the minute has not closed
    now[0] = 185.0  # 00:03
    tally.failed("10.0.0.1", "unknown key")
    fail_next[0] = True
    assert tally.flush() == 0  # a failed write keeps everything for the next flush
    assert tally.flush() == 3
    assert [c for c, _ in written] == ["10.0.0.1", "10.0.0.2", "other"]
    first = written[0][1]
    assert first == {
        "client": "10.0.0.1",
        "minute": "1970-01-01T00:02Z",
        "count": 5,
        "throttled": 1,
        "reasons": {"wrong secret": 5},
        "key_ids": ["abcdefabcdef"],
    }
    assert written[2][1]["count"] == 2
    assert tally.flush(everything=True) == 1  # shutdown: the open minute too
    assert written[3][1]["minute"] == "1970-01-01T00:03Z"


def test_client_buckets_are_bounded_and_valid_keys_get_their_token_back() -> None:
    limiter = TokenBucketLimiter(rate=1.0, burst=2, max_keys=100)
    for i in range(1000):
        limiter.take(f"10.0.{i // 256}.{i % 256}", now=0.0)
    assert len(limiter) <= 100
    assert limiter.take("a", now=0.0) == 0 and limiter.take("a", now=0.0) == 0
    assert limiter.take("a", now=0.0) > 0
    limiter.refund("a", now=0.0)
    assert limiter.take("a", now=0.0) == 0
    scope = {"client": ("2001:db8:1:2:aaaa::1", 5)}
    assert client_address(scope) == "2001:db8:1:2::/64"  # one host owns its /64
    assert client_address({"client": ("::ffff:192.0.2.1", 5)}) == "192.0.2.1"
    assert client_address({"client": None}) == "unknown"
    assert client_address({"client": ("bad value\n!", 1)}).startswith("h:")


# ---- C. /health and plain HTTP ------------------------------------------------------------------


def test_health_says_only_alive_without_touching_the_database(tmp_path: Path) -> None:
    url = _registry(tmp_path)
    app = create_app(url, registry_public_keys=[publisher_pub()])
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engines = [app.state.registry.engine, app.state.privacy_engine]
    with TestClient(app) as client:
        for engine in engines:
            event.listen(engine, "before_cursor_execute", seen)
        try:
            responses = [client.get("/health") for _ in range(100)]
        finally:
            for engine in engines:
                event.remove(engine, "before_cursor_execute", seen)
    assert {r.status_code for r in responses} == {200}
    assert {r.text for r in responses} == {'{"status":"ok"}'}
    assert statements == []
    assert client.app.openapi()["components"]["schemas"]["Health"]["properties"].keys() == {
        "status"
    }


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "api.example.org"])
def test_serve_refuses_plain_http_off_loopback(
    tmp_path: Path, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    started: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw))
    url = _registry(tmp_path)
    result = CliRunner().invoke(atoll_cli, ["serve", "--registry", url, "--host", host])
    assert result.exit_code == 2 and not started
    assert "refusing plain HTTP" in _said(result) and "--insecure-http" in _said(result)
    result = CliRunner().invoke(
        atoll_cli,
        [
            "serve",
            "--registry",
            url,
            "--host",
            host,
            "--insecure-http",
            "--registry-public-key",
            str(publisher_pub()),
        ],
    )
    assert result.exit_code == 0, result.output
    assert started[-1]["host"] == host and started[-1]["ssl_certfile"] is None


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_serve_allows_plain_http_on_loopback(
    tmp_path: Path, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    started: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw))
    result = CliRunner().invoke(
        atoll_cli,
        [
            "serve",
            "--registry",
            _registry(tmp_path),
            "--host",
            host,
            "--registry-public-key",
            str(publisher_pub()),
        ],
    )
    assert result.exit_code == 0, result.output
    assert started[-1]["host"] == host


def test_serve_refusal_is_a_clear_error_from_the_real_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "atoll", "serve", "--registry", _registry(tmp_path)]
        + ["--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "refusing plain HTTP on 0.0.0.0" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr + proc.stdout


def test_settings_pin_keys_from_the_environment_and_keep_checkpoints_off_the_key_dir(
    tmp_path: Path,
) -> None:
    url = _registry(tmp_path)
    key = tmp_path / "keys" / "api.pem"
    env = {
        "ATOLL_REGISTRY_URL": url,
        "ATOLL_API_AUDIT_KEY": str(key),
        "ATOLL_API_AUDIT_PUBLIC_KEYS": f"{tmp_path / 'a.pub'}:{tmp_path / 'b.pub'}",
        "ATOLL_AUDIT_CHECKPOINT_DIR": str(tmp_path / "share" / "checkpoints"),
        "ATOLL_AUDIT_CHECKPOINT_EVERY": "50",
    }
    settings = ApiSettings.from_env(env)
    assert settings.api_public_keys == [tmp_path / "a.pub", tmp_path / "b.pub"]
    assert settings.checkpoint_every_entries == 50 and settings.key_path() == key
    with pytest.raises(ValueError, match="is beside the signing key"):
        create_app(
            url,
            registry_public_keys=[publisher_pub()],
            audit_key=key,
            checkpoint_dir=key.parent / "checkpoints",
        )
    beside_default = tmp_path / "coordinator" / "audit" / "cp"  # default key: audit/api.pem
    with pytest.raises(ValueError, match="is beside the signing key"):
        create_app(url, registry_public_keys=[publisher_pub()], checkpoint_dir=beside_default)
    result = CliRunner().invoke(
        atoll_cli, ["serve", "--registry", url, "--checkpoint-dir", str(beside_default)]
    )
    assert result.exit_code == 2 and "is beside the signing key" in _said(result)
