"""A coordinator crash and a network partition, with every party on its own host.

The coordinator (app store, SuperLink with TLS and node authentication, fleet proxy, ServerApp)
runs in one Linux network namespace, each node (runtime + SuperNode) in its own; they share one
bridge and nothing else (tests/helpers/netns.py). The certificate names the coordinator's
address, nodes dial it through the fleet proxy, and each SuperNode's connection is seen, with
`ss` inside its namespace, going to that address over its veth link.

- Coordinator crash: SIGKILL the SuperLink and the ServerApp in round 2, restart the SuperLink
  on the same state database. The run cannot resume (its ServerApp is gone): Flower marks it
  failed, the registry holds no model of it, the nodes reconnect by themselves and a re-submitted
  run publishes; each node's ledger holds exactly the releases its audit log charged, the failed
  run's unspent reservation stays held (until it expires) and every audit log verifies.
- Partition: one node's link goes down (inside its namespace) after it was charged for round 1:
  the run goes on with the others after the round timeout and publishes, the card shows the
  node dropping out, and once the link is back the node takes part in the next run unaided.

SuperNodes run as `atoll node start` runs them, retrying the coordinator without a limit
(`_never_give_up`: LocalFederation's give up after 3 attempts).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from helpers.netns import NETNS_DIR, PREFIX, Hosts, remove_leftovers

from atoll.federation import COORDINATOR, LocalFederation
from atoll.flower_cli import flwr_cli
from atoll.partition import Partition, partition_csv
from atoll.processes import flower_env, spawn
from atoll.runs import RunOutcome, round_of
from atoll.supervise import descendants
from common.synth import write_csv
from privacy.audit import load_public_keys, query, verify
from privacy.dp import epsilon
from privacy.ledger import Ledger, Policy
from server.registry import Registry
from server.spend_reports import SpendReports

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "contracts" / "synthetic.yaml"
NODES = ("node-1", "node-2", "node-3")
POLICY = Policy(cap_epsilon=20.0, delta=1e-5)
ROUNDS = 2
RUN: dict[str, object] = {
    "num-server-rounds": ROUNDS,
    "min-nodes": 3,
    "sample-rate": 0.05,
    "contract-path": str(CONTRACT),
    "round-timeout": 30,
}


@dataclass
class Cluster:
    hosts: Hosts
    fed: LocalFederation
    parts: list[Partition]

    def state(self, node: str) -> Path:
        return self.fed.workdir / "nodes" / node / "state"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("faults-hosts")
    with Hosts([COORDINATOR, *NODES]) as hosts:
        fed = LocalFederation(
            work, proxy=True, on_host=hosts.on, public_host=hosts[COORDINATOR].address
        )
        with fed:
            data = write_csv(work / "all.csv", 3000, seed=5, departments=3)
            parts = partition_csv(data, "department", len(NODES), work / "silos")
            fed.start_coordinator()
            for part in parts:
                fed.add_node(part.name, part.path, CONTRACT, policy=POLICY)
                _never_give_up(fed, hosts, part.name)
            yield Cluster(hosts, fed, parts)
    assert all(not p.alive for p in fed.processes.values())


def _never_give_up(fed: LocalFederation, hosts: Hosts, node: str) -> None:
    """Run the node's SuperNode as `atoll node start` does: retrying the coordinator forever.

    LocalFederation's SuperNodes give up after 3 failed attempts (`--max-retries 3` in
    atoll.services.start_supernode), so a coordinator restart or a partition would end them;
    a deployed node never gives up. Same command otherwise, on the node's host."""
    old = fed.processes[f"node:{node}"]
    argv = [str(a) for a in old.popen.args]  # type: ignore[union-attr]
    argv = argv[argv.index("--") + 1 :]  # the command under atoll/supervise.py
    at = argv.index("--max-retries")
    del argv[at : at + 2]
    old.stop()
    home = fed.workdir / "nodes" / node / "flwr"
    # as its systemd unit does (Restart=on-failure): a SuperNode started right after its previous
    # instance stopped can be refused activation while the SuperLink still holds that session:
    # up to 2 heartbeat intervals (Flower's HEARTBEAT_PATIENCE × 30 s) after its last heartbeat
    give_up = time.monotonic() + 2 * 30 + 60
    while time.monotonic() < give_up:
        with hosts.on(node):
            proc = spawn(f"supernode-{node}", argv, old.log_path, flower_env(home), cwd=home)
        fed.processes[f"node:{node}"] = proc
        deadline = time.monotonic() + 15
        while proc.alive and time.monotonic() < deadline:
            time.sleep(0.5)
        if proc.alive:
            return
        time.sleep(3)
    pytest.fail(f"{node}'s SuperNode keeps exiting:\n{old.log_path.read_text()[-2000:]}")


# -- the hosts themselves ----------------------------------------------------------------------
def _ours() -> list[str]:
    names = [p.name for p in NETNS_DIR.iterdir()] if NETNS_DIR.is_dir() else []
    return names + [p.name for p in Path("/sys/class/net").iterdir()]


def test_hosts_are_removed_with_their_processes_even_when_the_body_fails() -> None:
    crashed_pid = _finished_pid()  # a session that crashed: its process is gone
    subprocess.run(["ip", "netns", "add", f"{PREFIX}{crashed_pid}-old"], check=True)
    subprocess.run(["ip", "link", "add", f"{PREFIX}{crashed_pid}b", "type", "bridge"], check=True)
    sleeper: subprocess.Popen[bytes] | None = None
    with pytest.raises(RuntimeError, match="the test failed"), Hosts(["a", "b"]) as hosts:
        tag = hosts.tag
        # what a crashed session left is gone before anything new is made
        assert not [n for n in _ours() if n.startswith(f"{PREFIX}{crashed_pid}")]
        with hosts.on("a"):
            sleeper = subprocess.Popen(["sleep", "600"])
        assert sleeper.pid in hosts.pids("a")
        assert hosts.run("b", ["ip", "-o", "-4", "addr", "show"]).count("inet ") == 2  # lo + veth
        raise RuntimeError("the test failed")
    assert sleeper is not None and sleeper.wait(timeout=30) == -signal.SIGKILL
    assert not [n for n in _ours() if n.startswith(tag)]
    assert remove_leftovers() == []


def _finished_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_every_party_is_on_its_own_host_and_nodes_cross_the_veth_links(cluster: Cluster) -> None:
    hosts, fed = cluster.hosts, cluster.fed
    coordinator = hosts[COORDINATOR].address
    cert = x509.load_pem_x509_certificate(fed.tls.server_cert.read_bytes())  # type: ignore[union-attr]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert coordinator in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    for name in ("superlink", "proxy", "app-store"):
        assert fed.processes[name].pid in hosts.pids(COORDINATOR), name
    # the SuperLink (Control API included) listens on the coordinator's loopback only
    listening = hosts.run(COORDINATOR, ["ss", "-Htln"])
    assert f"127.0.0.1:{fed.superlink_port}" in listening
    assert f"0.0.0.0:{fed.superlink_port}" not in listening
    for node in NODES:
        pids = hosts.pids(node)
        assert fed.processes[f"node:{node}"].pid in pids
        assert fed.processes[f"runtime:{node}"].pid in pids
        assert not set(pids) & set(hosts.pids(COORDINATOR))
        # a node host has loopback and its veth link, nothing else to reach anyone through
        assert len(hosts.run(node, ["ip", "-o", "link", "show"]).splitlines()) == 2
        found = _supernode_connection(cluster, node)
        assert found, f"{node}'s SuperNode holds no connection to the coordinator"
        assert found.startswith(hosts[node].address + ":")
        rx, tx = hosts.link_bytes(node)
        assert rx > 0 and tx > 0
    access = (fed.coordinator_home / "proxy" / "access.log").read_text()
    assert {hosts[n].address for n in NODES} <= {line.split()[0] for line in access.splitlines()}


def _supernode_connection(cluster: Cluster, node: str, tries: int = 60) -> str | None:
    """The local address of the node's SuperNode connection to the coordinator's fleet proxy,
    as `ss` shows it inside the node's namespace (None if none appears within `tries`)."""
    peer = f"{cluster.hosts[COORDINATOR].address}:{cluster.fed.proxy_port}"
    for _ in range(tries):
        for local, remote, process in cluster.hosts.tcp_peers(node):
            if remote == peer and "flower-supernod" in process:
                return local
        time.sleep(0.5)
    return None


# -- coordinator crash -------------------------------------------------------------------------
class Background:
    """A run submitted (on the coordinator's host) from a thread; `fired` is set once round
    `fire_at` has started."""

    def __init__(self, fed: LocalFederation, config: dict[str, object], fire_at: int) -> None:
        self.lines: list[str] = []
        self.fired = threading.Event()
        self.outcome: RunOutcome | None = None

        def on_line(line: str) -> None:
            self.lines.append(line)
            if (r := round_of(line)) is not None and r[0] >= fire_at:
                self.fired.set()

        def body() -> None:
            self.outcome = fed.run(dict(config), on_line=on_line, timeout=900)

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def log(self) -> str:
        return "\n".join(self.lines[-40:])


def _kill_coordinator(fed: LocalFederation) -> list[str]:
    """SIGKILL the SuperLink and everything below it (SuperExec, ServerApp): a host crash.
    Returns the command names killed."""
    superlink = fed.processes["superlink"]
    below = descendants(superlink.pid)
    names = []
    for pid in below:
        try:
            names.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    for pid in [superlink.pid, *below]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    superlink.popen.wait(timeout=30)
    return names


def _flwr_runs(cluster: Cluster) -> dict[str, dict[str, str]]:
    """`flwr ls` on the coordinator host, by run id."""
    import json

    with cluster.hosts.on(COORDINATOR):
        res = flwr_cli(["ls", "atoll", "--format", "json"], cluster.fed.coordinator_home / "flwr")
    assert res.returncode == 0, res.stdout + res.stderr
    return {str(r["run-id"]): r for r in json.loads(res.stdout)["runs"]}


def _charged(cluster: Cluster, node: str, run_id: str) -> list[tuple[float, float, int, str, int]]:
    """(noise, rate, steps, purpose, round) of every release the node's audit log charged to
    `run_id`."""
    url = f"sqlite:///{cluster.state(node) / 'node-privacy.db'}"
    entries = query(url, f"node:{node}", action="release.charged", subject=f"run:{run_id}")
    return [
        (
            float(e.details["noise_multiplier"]),
            float(e.details["sample_rate"]),
            int(e.details["steps"]),
            str(e.details["purpose"]),
            int(e.details["round"]),
        )
        for e in entries
    ]


def _ledger_matches_audit(cluster: Cluster, node: str, run_ids: list[str]) -> Ledger:
    """The node's ledger holds, per run, exactly the releases its audit log charged."""
    ledger = Ledger(cluster.state(node))
    delta = ledger.policy().delta
    for run_id in run_ids:
        events = [c[:3] for c in _charged(cluster, node, run_id)]
        assert ledger.run_epsilon(run_id) == pytest.approx(epsilon(events, delta), rel=1e-9)
    url = f"sqlite:///{cluster.state(node) / 'node-privacy.db'}"
    everything = query(url, f"node:{node}", action="release.charged", limit=None)
    assert ledger.status().events == len(everything)
    return ledger


def _audit_logs_verify(cluster: Cluster) -> None:
    fed = cluster.fed
    coordinator_pub = fed.coordinator_home / "audit" / "coordinator.pub"
    assert verify(fed.registry_url, "coordinator", load_public_keys([coordinator_pub])).ok
    for node in NODES:
        state = cluster.state(node)
        keys = load_public_keys([state / "audit-key" / "audit.pub"])
        assert verify(f"sqlite:///{state / 'node-privacy.db'}", f"node:{node}", keys).ok, node
    # what the operator runs on the coordinator host
    res = subprocess.run(
        [sys.executable, "-m", "atoll", "audit", "verify", "--log", "coordinator",
         "--db", fed.registry_url, "--public-key", str(coordinator_pub)],
        capture_output=True, text=True, timeout=120, env=flower_env(), cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def test_coordinator_crash_mid_round_fails_the_run_cleanly_and_the_next_run_publishes(
    cluster: Cluster,
) -> None:
    fed = cluster.fed
    supernodes = {n: fed.processes[f"node:{n}"].pid for n in NODES}
    crashed = Background(fed, {**RUN, "num-server-rounds": 3}, fire_at=2)
    assert crashed.fired.wait(900), crashed.log()
    killed = _kill_coordinator(fed)  # round 2's train messages are out: mid-round
    assert any("flower-superlink" in k for k in killed), killed
    assert any("flwr-serverapp" in k for k in killed), killed
    crashed.thread.join(300)
    out = crashed.outcome
    assert out is not None and out.exit_code != 0 and out.model_version is None, crashed.log()
    assert out.run_id is not None
    with Registry(fed.registry_url) as reg:  # nothing half-published
        assert reg.count_models() == 0

    fed.restart_superlink()  # same port, same state database
    # the killed ServerApp wrote no end for its run: the restart closes that trail, and only it
    ends = {a: {e.details["run"] for e in query(fed.registry_url, "coordinator", action=a)}
            for a in ("run.abandoned", "run.finished", "run.failed")}  # fmt: skip
    assert str(out.run_id) in ends["run.abandoned"], ends
    assert not ends["run.abandoned"] & (ends["run.finished"] | ends["run.failed"]), ends
    status: dict[str, str] = {}
    for _ in range(120):  # Flower fails a run whose ServerApp stopped sending heartbeats
        status = _flwr_runs(cluster)[out.run_id]
        if status["status"].startswith("finished"):
            break
        time.sleep(2)
    assert status["status"] == "finished:failed", status
    assert "heartbeat" in status["status-details"].lower(), status

    # the nodes reconnect by themselves: the same SuperNode processes join the next run
    again = fed.run({**RUN, "num-server-rounds": 1}, timeout=900)
    assert again.exit_code == 0 and again.model_version == 1, again
    assert {n: fed.processes[f"node:{n}"].pid for n in NODES} == supernodes
    assert _flwr_runs(cluster)[str(again.run_id)]["status"] == "finished:completed"
    with Registry(fed.registry_url) as reg:
        assert [c.version for c in reg.versions(str(again.model_name))] == [1]
        card = reg.card(str(again.model_name))
    assert card.run["run_id"] == again.run_id
    assert sorted(p.name for p in card.participants) == list(NODES)

    for node in NODES:
        ledger = _ledger_matches_audit(cluster, node, [out.run_id, str(again.run_id)])
        runs = {r.run_id: r for r in ledger.status().runs}
        assert runs[str(again.run_id)].status == "closed"
        dead = runs[out.run_id]
        assert _charged(cluster, node, out.run_id), f"{node} was never charged before the crash"
        # the failed run keeps what it spent; its unspent part is held until the reservation
        # expires (the node never got a finish) — or was released if it did
        assert dead.spent_epsilon > 0
        assert dead.status in ("active", "expired", "closed")
        if dead.status == "active":
            assert ledger.status().reserved_epsilon > 0
        else:
            assert ledger.status().reserved_epsilon == pytest.approx(0.0, abs=1e-12)
        ledger.close_db()
    _audit_logs_verify(cluster)


# -- partition ---------------------------------------------------------------------------------
def test_partitioned_node_is_dropped_and_rejoins_the_next_run_unaided(cluster: Cluster) -> None:
    fed, hosts = cluster.fed, cluster.hosts
    victim, others = NODES[-1], NODES[:-1]
    with Registry(fed.registry_url) as reg:
        published_before = reg.count_models() and len(reg.versions("synthetic-churn"))
    events_before = Ledger(cluster.state(victim)).status().events
    cut = Background(fed, {**RUN, "min-nodes": 2}, fire_at=1)
    # pull the victim's cable once its runtime has been charged for round 1: its update may or
    # may not have left; nothing of a later round can reach it
    for _ in range(3000):
        if Ledger(cluster.state(victim)).status().events > events_before:
            hosts.set_link(victim, up=False)
            break
        assert cut.thread.is_alive(), cut.log()
        time.sleep(0.2)
    else:
        pytest.fail(f"{victim} was never charged for round 1:\n{cut.log()}")
    cut.thread.join(900)
    out = cut.outcome
    assert out is not None and out.exit_code == 0, cut.log()
    assert out.model_version == published_before + 1 and out.run_id is not None, out
    with Registry(fed.registry_url) as reg:
        card = reg.card(str(out.model_name), out.model_version)
    trained = {p.name: int(p.model_dump()["rounds"]) for p in card.participants}
    assert all(trained[n] == ROUNDS for n in others), trained
    dropped_after = trained.get(victim, 0)  # rounds the coordinator got the victim's update
    assert dropped_after < ROUNDS, trained
    # the card names the round the victim missed and why (no reply, or the error reply for its
    # cut upload, attributed to it by message — never to the coordinator's own node id)
    failures = card.run["failures_by_round"]
    assert any(victim in by_node for by_node in failures.values()), card.run
    assert all(set(by_node) <= set(NODES) for by_node in failures.values()), card.run
    # a round's evaluation rides on the next round's train reply: none from the victim after
    # its last update arrived
    after = card.metrics["rounds"][max(dropped_after - 1, 0) :]
    assert after and all(victim not in r["nodes"] for r in after), card.metrics["rounds"]
    reports = SpendReports(fed.registry_url)
    (row,) = reports.rows(run_id=out.run_id, node=victim)
    assert row.status == "failed" and "no reply" in str(row.reason), (row.status, row.reason)
    assert {r.status for r in reports.rows(run_id=out.run_id) if r.node in others} == {
        "participated"
    }
    reports.close()

    hosts.set_link(victim, up=True)  # nothing else is done to the node
    assert _supernode_connection(cluster, victim, tries=240), f"{victim} did not reconnect"
    rejoined = fed.run({**RUN, "num-server-rounds": 1}, timeout=900)  # min-nodes: all three
    assert rejoined.exit_code == 0 and rejoined.run_id is not None, rejoined
    with Registry(fed.registry_url) as reg:
        card = reg.card(str(rejoined.model_name), rejoined.model_version)
    assert sorted(p.name for p in card.participants) == list(NODES)

    # the victim's ledger: exactly what its audit log charged; in the cut run only rounds up to
    # the one it was cut in (its update for that round may never have arrived)
    ledger = _ledger_matches_audit(cluster, victim, [out.run_id, rejoined.run_id])
    rounds = sorted(r for *_, purpose, r in _charged(cluster, victim, out.run_id)
                    if purpose == "training")  # fmt: skip
    assert rounds[:dropped_after] == list(range(1, dropped_after + 1)), rounds
    assert len(rounds) <= dropped_after + 1, rounds
    runs = {r.run_id: r for r in ledger.status().runs}
    assert runs[rejoined.run_id].status == "closed"
    assert runs[out.run_id].status in ("active", "closed")  # held until expiry unless finished
    ledger.close_db()
    for node in others:
        runs = {r.run_id: r for r in Ledger(cluster.state(node)).status().runs}
        assert runs[out.run_id].status == runs[rejoined.run_id].status == "closed"
    _audit_logs_verify(cluster)
