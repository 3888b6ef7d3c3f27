"""A hostile coordinator against real SuperNodes and node runtimes.

The coordinator is the adversary: it signs its own app (tests/adversary/) with its app-signing
key, so every node runs it. The app keeps Atoll's relay (nodes must still answer) and adds a
`query.steal` handler; its ServerApp sends each node a roll call, a normal round, then the
attacks: the NaN-threshold oracle (50 evaluations whose answer would differ with the data; again
through a train that evaluates its incoming weights, and through the final model on finish),
non-finite, misshapen and oversized weights, every out-of-bounds setting, wrong contract
hashes, a replay after the run finished, a round beyond the run, and reads of the node's files.

One federation (module fixture) on Telco split by `Contract` into two silos, one with a planted
canary customer; each SuperNode (and so every app process it starts) runs as the unprivileged
user `atoll-relay-test`, the runtimes as root. Checks: every attack is refused with the code of
the limit it hit, or answered and charged; nothing refused is charged; the oracle's replies are
byte-identical; each node's ε matches an independent accountant over the releases in its own
audit log; the canary is nowhere outside its node; the relay cannot read the node's files; and a
normal run through the same federation still publishes a model.

Needs root (to create the user and run the SuperNodes as it); without it the suite fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dp_accounting
import pandas as pd
import pytest

from atoll.federation import LocalFederation
from atoll.flower_cli import flwr_cli
from atoll.partition import partition_csv
from atoll.runs import CONNECTION, follow_run
from common.contract import load_contract
from common.encoding import Encoder
from privacy.audit import AuditEntry, query
from privacy.journal import KEY_FILE
from privacy.ledger import DB_NAME, Ledger
from server.app_store import SigningKey, publish_app
from server.node_names import NodeNames

pytestmark = [pytest.mark.e2e, pytest.mark.adversarial, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "contracts" / "telco_churn.yaml"
ADVERSARY = Path(__file__).resolve().parent / "adversary"
RELAY_USER = "atoll-relay-test"
CANARY = f"CANARY{uuid.uuid4().hex[:12]}"
CANARY_NUMBER = "987654.3210123"
ORACLE_MESSAGES = 50
STOLEN = ("data", "ledger-db", "ledger-key", "node-toml", "audit-key", "state-dir")

# What each attack must get, on every node: a refusal code, or "answered".
EXPECTED = {
    "batch": {"batch-too-small": "limit-expected-batch", "batch-finish": "answered"},
    "attack": {
        "rollcall": "answered",
        "train": "answered",
        "oracle-A": "weights-nonfinite",
        "oracle-B": "limit-weight-norm",
        "oracle-C": "answered",
        "oracle-A-in-train": "weights-nonfinite",  # train evaluating its incoming weights
        "train-neg-inf": "weights-nonfinite",
        "shape-extra-column": "weights-shape",
        "shape-missing-tensor": "weights-shape",
        "huge-norm": "limit-weight-norm",
        "sample-rate-tiny": "limit-steps",
        "eval-bins-huge": "limit-eval-bins",
        "total-rounds-huge": "limit-total-rounds",
        "local-epochs-huge": "limit-local-epochs",
        "noise-tiny": "limit-noise",
        "learning-rate-final-huge": "setting-learning-rate-final",
        "model-transformer": "model-not-allowed",
        "contract-hash-other": "contract-mismatch",
        "contract-hash-missing": "contract-hash-missing",
        "server-round-beyond": "setting-server-round",
        "finish": "answered",  # closes the run; its final model (oracle A) is refused inside
        "replay-train": "budget-closed",
        "steal": "answered",  # by the hostile handler itself: it never reaches the runtime
    },
}
# Releases an answered request makes: (purpose, σ, q, steps) of the hostile app's run settings.
CHARGED = {"train": ("training", 1.0, 0.05, 20), "oracle-C": ("evaluation", 10.0, 1.0, 1)}


# ---- set-up ------------------------------------------------------------------------------------


def _relay_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.fail(
            "the adversarial suite runs each SuperNode as an unprivileged OS user and creates "
            f"that user ({RELAY_USER}); run it as root (CI does)"
        )
    try:
        return pwd.getpwnam(RELAY_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RELAY_USER],
            check=True,
        )
        return pwd.getpwnam(RELAY_USER)


@contextlib.contextmanager
def _interpreter_usable_by_others() -> Iterator[list[Path]]:
    """The relay user must run the venv's interpreter. Where a directory above it denies others
    search permission (e.g. a pyenv under a 0700 /root), add only o+x — no listing, no reads —
    for the duration of the suite, then restore the mode."""
    targets = {Path(os.path.realpath(sys.executable)), Path(sys.prefix).resolve()}
    changed: list[tuple[Path, int]] = []
    for d in sorted({p for t in targets for p in t.parents}):
        mode = stat.S_IMODE(d.stat().st_mode)
        if not mode & stat.S_IXOTH:
            d.chmod(mode | stat.S_IXOTH)
            changed.append((d, mode))
    try:
        yield [d for d, _ in changed]
    finally:
        for d, mode in reversed(changed):
            d.chmod(mode)


def _plant_canary(silo: Path) -> None:
    """A customer whose id, an unknown category and an out-of-range number are unique strings,
    and a row that must be rejected (its tenure is not a number)."""
    frame = pd.read_csv(silo, dtype=str, keep_default_na=False)
    row = frame.iloc[0].copy()
    row["customerID"] = f"{CANARY}-ID"
    row["PaymentMethod"] = f"{CANARY}-PAY"
    row["MonthlyCharges"] = CANARY_NUMBER
    bad = row.copy()
    bad["customerID"] = f"{CANARY}-ID2"
    bad["tenure"] = f"{CANARY}-TENURE"
    pd.concat([frame, pd.DataFrame([row, bad])]).to_csv(silo, index=False)


def _wait_for_nodes(fed: LocalFederation, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    online = 0
    while time.monotonic() < deadline:
        res = flwr_cli(
            ["supernode", "list", CONNECTION, "--format", "json"], fed.coordinator_home / "flwr"
        )
        if res.returncode == 0 and "{" in res.stdout:
            nodes = json.loads(res.stdout[res.stdout.index("{") :])["nodes"]
            online = sum(1 for n in nodes if n["status"] == "online")
            if online >= count:
                return
        time.sleep(1)
    logs = {p.name: p.read_text(errors="replace")[-600:] for p in fed.logs.glob("*.log")}
    pytest.fail(f"only {online} of {count} SuperNodes came online: {logs}")


def _hostile_app(dest: Path) -> Path:
    """tests/adversary + common/ + the real relay, as one app directory (what gets signed)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ADVERSARY, dest, ignore=ignore)
    shutil.copytree(ROOT / "common", dest / "common", ignore=ignore)
    (dest / "client").mkdir()
    for name in ("__init__.py", "client_app.py"):
        shutil.copy2(ROOT / "client" / name, dest / "client" / name)
    return dest


def _node_files(fed: LocalFederation, name: str, data: Path) -> dict[str, str]:
    """What the adversary would like to read on a node (it knows the paths)."""
    home = fed.workdir / "nodes" / name
    state = home / "state"
    return {
        "data": str(data),
        "ledger-db": str(state / DB_NAME),
        "ledger-key": str(state / KEY_FILE),
        "node-toml": str(home / "node.toml"),
        "audit-key": str(state / "audit-key" / "audit.pem"),
        "state-dir": str(state),
    }


@pytest.fixture(scope="module")
def attacked(shared_data: Path) -> Iterator[dict[str, Any]]:
    user = _relay_user()
    work = Path(tempfile.mkdtemp(prefix="atoll-adversarial-", dir="/tmp"))
    try:
        with _interpreter_usable_by_others() as opened:
            yield from _attack(work, user, shared_data, opened)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _attack(
    work: Path, user: pwd.struct_passwd, shared_data: Path, opened: list[Path]
) -> Iterator[dict[str, Any]]:
    work.chmod(0o755)  # the SuperNodes' user must reach its own files below it
    parts = partition_csv(shared_data / "Telco-Customer-Churn.csv", "Contract", 2, work / "silos")
    _plant_canary(parts[0].path)
    for part in parts:
        part.path.chmod(0o600)  # the owner's data: root only
    contract = load_contract(CONTRACT)
    fed = LocalFederation(work / "fed")
    with fed:
        fed.start_coordinator()
        assert fed.tls is not None and fed.app_signing is not None
        for d in (fed.tls.ca_cert.parent, fed.app_signing.trusted_entities.parent):
            d.chmod(0o711)  # CA cert and trusted-entities.yaml by path; keys stay 0600
        for part in parts:
            fed.add_node(part.name, part.path, CONTRACT, supernode_user=user.pw_name)
        _wait_for_nodes(fed, len(parts))
        names = NodeNames(fed.registry_url)
        node_names = names.all()
        names.close()
        data = {p.name: p.path for p in parts}
        targets = {str(i): _node_files(fed, n, data[n]) for i, n in node_names.items()}
        stored = publish_app(
            _hostile_app(work / "hostile-app"),
            fed.app_store_dir,
            SigningKey.load(fed.app_signing.private_key),
        )
        reports: dict[str, dict[str, Any]] = {}
        runs: dict[str, Any] = {}
        outputs: list[str] = []
        for phase in ("batch", "attack"):
            report = work / f"report-{phase}.json"
            runs[phase] = follow_run(
                flwr_home=fed.coordinator_home / "flwr",
                config={
                    "phase": phase,
                    "report-path": str(report),
                    "contract-path": str(CONTRACT),
                    "contract-hash": contract.hash,
                    "n-features": Encoder(contract).n_features,
                    "min-nodes": len(parts),
                    "targets": json.dumps(targets),
                    "oracle-messages": ORACLE_MESSAGES,
                },
                app=stored.spec,
                work=fed.coordinator_home,
                log_path=fed.logs / "hostile-runs.log",
                on_line=outputs.append,
                timeout=3000,
            )
            reports[phase] = json.loads(report.read_text()) if report.exists() else {}
        normal_outputs: list[str] = []
        normal = fed.run(
            {
                "num-server-rounds": 3,
                "min-nodes": len(parts),
                "contract-path": str(CONTRACT),
                "round-timeout": 600,
            },
            on_line=normal_outputs.append,
            timeout=1800,
        )
        yield {
            "fed": fed,
            "parts": parts,
            "user": user,
            "names": node_names,
            "targets": targets,
            "runs": runs,
            "reports": reports,
            "outputs": outputs,
            "normal": normal,
            "normal_outputs": normal_outputs,
            "opened": opened,
        }


# ---- reading the results -----------------------------------------------------------------------


def _records(attacked: dict[str, Any], phase: str) -> list[dict[str, Any]]:
    """The report's records of one phase, each with its node's name."""
    report = attacked["reports"][phase]
    assert report.get("records"), f"{phase}: no report; see {attacked['fed'].logs}"
    return [{**r, "node": attacked["names"][r["node_id"]]} for r in report["records"]]


def _ledger(attacked: dict[str, Any], name: str) -> Ledger:
    return Ledger(attacked["fed"].workdir / "nodes" / name / "state")


def _audit(attacked: dict[str, Any], name: str, **filters: Any) -> list[AuditEntry]:
    ledger = _ledger(attacked, name)
    try:
        return query(ledger.engine, f"node:{name}", limit=None, **filters)
    finally:
        ledger.close_db()


def _request_of(entries: list[AuditEntry]) -> dict[int, str]:
    """For each entry written while a request held the runtime's lock: that request's message id.

    The runtime decides one request at a time and writes `request.received` first, so an entry
    written under the lock (e.g. `release.charged`) belongs to the last `request.received`."""
    owner: dict[int, str] = {}
    current = ""
    for e in sorted(entries, key=lambda e: e.seq):
        if e.action == "request.received":
            current = e.details["message"]
        owner[e.seq] = current
    return owner


# ---- the attacks -------------------------------------------------------------------------------


def test_hostile_runs_complete(attacked: dict[str, Any]) -> None:
    for phase, run in attacked["runs"].items():
        assert run.exit_code == 0, (phase, "\n".join(attacked["outputs"][-60:]))
    assert any("HOSTILE done" in line for line in attacked["outputs"])


def test_every_attack_is_refused_with_its_code_or_answered_and_charged(
    attacked: dict[str, Any],
) -> None:
    nodes = sorted(attacked["names"].values())
    refused: Counter[str] = Counter()
    for phase, expected in EXPECTED.items():
        records = _records(attacked, phase)
        for node in nodes:
            mine = [r for r in records if r["node"] == node]
            assert {r["attack"] for r in mine} == set(expected), (phase, node)
            for r in mine:
                got = r.get("code", r["outcome"])
                assert got == expected[r["attack"]], (node, r["attack"], r["param"], r)
                refused[got] += r["outcome"] == "refused"
    print("refusals by code (both nodes):", dict(sorted((k, v) for k, v in refused.items() if v)))

    # The node's own audit log: every request arrived once; only answered ones were charged.
    records = _records(attacked, "batch") + _records(attacked, "attack")
    for node in nodes:
        mine = [r for r in records if r["node"] == node and r["attack"] != "steal"]
        entries = _audit(attacked, node)
        received = Counter(e.details["message"] for e in entries if e.action == "request.received")
        assert all(received[r["request_id"][:80]] == 1 for r in mine), node
        steals = {r["request_id"][:80] for r in records if r["attack"] == "steal"}
        assert not steals & set(received)  # the steal handler never asked the runtime
        owner = _request_of(entries)
        charged = [e for e in entries if e.action == "release.charged"]
        charged_by = Counter(owner[e.seq] for e in charged)
        answered = {r["request_id"][:80]: r for r in mine if r["attack"] in CHARGED}
        assert len(answered) == 1 + 3  # one normal round, three oracle-C evaluations
        hostile_charges = {m: n for m, n in charged_by.items() if m in answered}
        assert hostile_charges == dict.fromkeys(answered, 1), node
        for e in charged:
            if (r := answered.get(owner[e.seq])) is not None:
                d = e.details
                release = (d["purpose"], d["noise_multiplier"], d["sample_rate"], d["steps"])
                assert release == pytest.approx(CHARGED[r["attack"]]), (node, r["attack"], d)
        refused_ids = {r["request_id"][:80] for r in mine if r["outcome"] == "refused"}
        assert not refused_ids & set(charged_by), f"{node}: a refused request was charged"
        # the node logged exactly the refusals the coordinator saw, with the same codes, and
        # nothing of the hostile runs reached the constant after-the-charge refusal
        hostile = {f"run:{attacked['reports'][p]['run_id']}" for p in EXPECTED}
        ours = [e for e in entries if e.subject in hostile]
        refusals = [e for e in ours if e.action == "request.refused"]
        logged = Counter(e.details["code"] for e in refusals if e.details["kind"] != "final")
        assert logged == Counter(r["code"] for r in mine if r["outcome"] == "refused"), node
        assert not [e for e in ours if e.action == "request.failed"]
        # finish closed the run but refused to evaluate its final weights (the oracle again)
        (finish,) = [r for r in mine if r["attack"] == "finish"]
        assert "hist-pos" not in finish["metrics"]
        final = [e for e in refusals if e.details["kind"] == "final"]
        assert [(owner[e.seq], e.details["code"]) for e in final] == [
            (finish["request_id"][:80], "weights-nonfinite")
        ]


def test_oracle_replies_are_byte_identical(attacked: dict[str, Any]) -> None:
    records = _records(attacked, "attack")
    nodes = len(attacked["names"])
    for variants, code in (
        (("oracle-A", "oracle-A-in-train"), "weights-nonfinite"),
        (("oracle-B",), "limit-weight-norm"),
    ):
        replies = [r for r in records if r["attack"] in variants]
        oracle = [r for r in replies if r["attack"] == variants[0]]
        assert len(oracle) == ORACLE_MESSAGES * nodes
        assert len({r["param"] for r in oracle}) == ORACLE_MESSAGES  # 50 distinct thresholds
        assert {r.get("code") for r in replies} == {code}
        contents = Counter(base64.b64decode(r["content"]) for r in replies)
        # one reply, byte for byte, whatever the threshold, the message type or the node
        assert len(contents) == 1, f"{variants}: {len(contents)} distinct replies"
        print(f"{variants}: {len(replies)} replies, 1 distinct: {next(iter(contents))!r}")
    answered = [r for r in records if r["attack"] == "oracle-C"]
    assert all(len(r["metrics"]["hist-pos"]) == 20 for r in answered)
    assert len({base64.b64decode(r["content"]) for r in answered}) == len(answered)  # noised


def _independent_epsilon(releases: list[tuple[float, float, int]], delta: float) -> float:
    """dp-accounting's PLD over exactly these releases, composed one by one as they were made."""
    acc = dp_accounting.pld.PLDAccountant()
    for sigma, q, steps in releases:
        gauss = dp_accounting.GaussianDpEvent(sigma)
        event = gauss if q == 1 else dp_accounting.PoissonSampledDpEvent(q, gauss)
        acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return float(acc.get_epsilon(delta))


def test_epsilon_matches_an_independent_accountant(attacked: dict[str, Any]) -> None:
    for node in sorted(attacked["names"].values()):
        releases = [
            (e.details["noise_multiplier"], e.details["sample_rate"], e.details["steps"])
            for e in _audit(attacked, node, action="release.charged")
        ]
        ledger = _ledger(attacked, node)
        try:
            status = ledger.status()
        finally:
            ledger.close_db()
        assert status.events == len(releases) >= 4 + 6  # hostile run + the normal 3-round run
        independent = _independent_epsilon(releases, status.delta)
        ours = status.spent_epsilon
        print(f"{node}: {len(releases)} releases, ε node={ours:.4f} independent={independent:.4f}")
        assert independent * 0.9 <= ours <= independent * 1.03, (node, ours, independent)
        assert ours <= status.cap_epsilon


def test_canary_never_leaves_its_node(attacked: dict[str, Any]) -> None:
    fed: LocalFederation = attacked["fed"]
    node_1 = attacked["parts"][0]
    assert CANARY in node_1.path.read_text()  # the control: it is in the data the node used
    blobs: list[bytes] = [b"\n".join(s.encode() for s in attacked["outputs"])]
    blobs.append(b"\n".join(s.encode() for s in attacked["normal_outputs"]))
    for report in attacked["reports"].values():
        blobs.append(json.dumps(report).encode())
        blobs += [base64.b64decode(r.get("content", "")) for r in report["records"]]
    blobs += [log.read_bytes() for log in fed.logs.glob("*.log")]
    for node in attacked["names"].values():
        blobs += [repr(e.details).encode() for e in _audit(attacked, node)]
    blobs += [repr(e.details).encode() for e in query(fed.registry_url, "coordinator", limit=None)]
    for db in (
        *fed.coordinator_home.glob("superlink-state.db*"),
        *fed.coordinator_home.glob("registry.db*"),
    ):
        blobs.append(db.read_bytes())
    everything = b"\n".join(blobs)
    assert len(everything) > 100_000  # we really looked at something
    assert CANARY.encode() not in everything
    assert CANARY_NUMBER.encode() not in everything


def test_relay_runs_as_another_user_and_cannot_read_the_node(attacked: dict[str, Any]) -> None:
    fed: LocalFederation = attacked["fed"]
    user: pwd.struct_passwd = attacked["user"]
    steals = [r for r in _records(attacked, "attack") if r["attack"] == "steal"]
    assert len(steals) == len(attacked["names"])
    for r in steals:
        stolen = r["stolen"]
        assert (stolen["uid"], stolen["gid"]) == (str(user.pw_uid), str(user.pw_gid))
        got = {label: stolen[label] for label in STOLEN}
        print(f"{r['node']}: the relay (uid {stolen['uid']}) tried {got}")
        others = {k: v for k, v in got.items() if k != "node-toml"}
        assert others == dict.fromkeys(others, "PermissionError"), (r["node"], got)
    print("search permission (o+x) added for the suite on:", attacked["opened"])
    for node_id, name in attacked["names"].items():
        files = attacked["targets"][str(node_id)]
        assert all(os.stat(files[label]).st_uid == 0 for label in STOLEN)  # the owner's
        assert stat.S_IMODE(os.stat(files["data"]).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(files["state-dir"]).st_mode) == 0o700
        sock = os.stat(fed.workdir / "nodes" / name / "runtime.sock")
        assert (sock.st_uid, sock.st_gid, stat.S_IMODE(sock.st_mode)) == (0, user.pw_gid, 0o660)
        assert _uids(fed.processes[f"node:{name}"].pid) == {user.pw_uid}
        assert _uids(fed.processes[f"runtime:{name}"].pid) == {0}
    for r in steals:  # last: node.toml is the owner's file too (atoll node init writes it 0600)
        assert r["stolen"]["node-toml"] == "PermissionError", (r["node"], r["stolen"])


def _uids(pid: int) -> set[int]:
    """Real, effective, saved and filesystem uid of a live process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return {int(u) for u in line.split()[1:]}
    raise AssertionError(f"no Uid line for {pid}")


def test_a_normal_run_afterwards_publishes_a_model(attacked: dict[str, Any]) -> None:
    normal = attacked["normal"]
    assert normal.exit_code == 0, "\n".join(attacked["normal_outputs"][-40:])
    assert normal.model_version is not None
