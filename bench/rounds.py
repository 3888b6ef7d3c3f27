"""Round overhead on the real deployment engine: 3, 5 and 10 nodes on loopback with TLS.

    .venv/bin/python -m bench.rounds            # ~16 min on 2 cores
    .venv/bin/python -m bench.rounds --quick    # 3 nodes, default options only
    .venv/bin/python -m bench.rounds --nodes 3 --variants cold-clientapp --out runs/bench/quick
                                                # warm vs cold launch, results off bench/results

Each configuration starts a fresh `atoll.federation.LocalFederation` exactly as `make demo` does
(TLS SuperLink with node authentication, signed app; per node an owner-run node runtime —
`atoll node runtime`, which alone reads the data and trains — and a SuperNode whose ClientApp is
the thin relay `client.client_app`, launched per message by the node's warm launcher:
`client/launcher`), each node holding `--rows` synthetic rows from
`common.synth`. It runs `--rounds` rounds with the app's default run config (FedAvg, DP-SGD with
the fixed default noise multiplier, noised evaluation) and stops everything. Whether a round is
one train message per node (evaluation riding on it) or a train and an evaluate message is the
app's business: both are measured, by message kind.

Where the time comes from:
- round wall time: the coordinator's signed audit log (`round.reply` entries, written when the
  ServerApp aggregates each reply; µs timestamps). Round k ends when the ServerApp aggregates its
  last replies (evaluate if the round has evaluate messages, else train); round 1 starts when the
  roll call's `node.joined` entries are written.
- each node's own work: its own audit log (`request.received` → `reply.sent` of each train and
  evaluate request, µs timestamps), i.e. everything the runtime does for a request — admission,
  ledger charge, DP-SGD and the noised evaluation, audit writes — except the ledger integrity
  check that precedes `request.received` (measured separately, `ledger_verify_s`).
- where a message goes on a node: Flower's logs carry no timestamps, so every line of every
  process log is stamped when it appears (bench/logclock.py, 50 ms polling); the run's `--stream`
  output is stamped too.

Reported per configuration: start-up times, wall time per round, the slowest node's own work per
round, the overhead (round minus the slowest node's work; median over rounds) and the segments of
each message next to the import times of a fresh interpreter (and of a warm launch). Variants:
Flower's default `--isolation subprocess` with the warm clientapp launcher ("default": the
configuration `make demo` runs); "cold-clientapp", the same without the launcher (Flower starts
a fresh `flwr-clientapp` interpreter per message); `--isolation process` with a long-lived
`flower-superexec` per node that we start; and the SuperExec's task polling interval
(FLWR_SUPEREXEC_TASK_POLL_INTERVAL) at the value the default does not use (0.1 s or Flower's
1 s). Writes bench/results/rounds.{json,md,png} (or into --out).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import (
    CONTRACTS,
    REPO,
    WORK,
    bench_env,
    finish_metadata,
    md_table,
    meta_markdown,
    run_metadata,
    wait_for_quiet,
    write_results,
)
from bench.logclock import LogClock, Stamped

CONTRACT = CONTRACTS / "synthetic.yaml"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ROUND = re.compile(r"\[ROUND (\d+)/(\d+)\]")
KINDS = ("train", "evaluate")
RELAY_IMPORT = "import client.client_app (the relay ClientApp)"
NODE_WORK_SOURCE = (
    "node audit logs: request.received -> reply.sent per train/evaluate request "
    "(ledger integrity check before request.received not included; see ledger_verify_s)"
)
ROUND_SOURCE = (
    "coordinator audit log: last round.reply of the round (kind evaluate if any, else train); "
    "round 1 starts at the last node.joined entry"
)


@dataclass(frozen=True)
class Variant:
    name: str
    isolation: str = "subprocess"
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""
    warm_clientapp: bool = True  # each message's flwr-clientapp forked from the node's zygote


VARIANTS = {
    "default": Variant(
        "default",
        note="as `make demo`: Flower defaults (--isolation subprocess), signed app, warm "
        "clientapp launcher (client/launcher)",
    ),
    "cold-clientapp": Variant(
        "cold-clientapp",
        warm_clientapp=False,
        note="as default but without the warm launcher: Flower starts a fresh flwr-clientapp "
        "interpreter per message",
    ),
    "isolation-process": Variant(
        "isolation-process",
        isolation="process",
        note="--isolation process + a flower-superexec per node started by us",
    ),
    "superexec-poll-0.1s": Variant(
        "superexec-poll-0.1s",
        env={"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"},
        note="default isolation, SuperExec task polling every 0.1 s",
    ),
    "superexec-poll-1s": Variant(
        "superexec-poll-1s",
        env={"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0"},
        note="default isolation, SuperExec task polling every 1 s (Flower's default)",
    ),
}


def poll_settings() -> dict[str, float | None]:
    """The polling intervals the default configuration runs with (recorded with the results)."""
    import inspect

    import atoll.processes as processes

    superexec = getattr(processes, "SUPEREXEC_POLL_S", None)  # None: Flower's 1 s
    grid: float | None = None
    try:
        from server.fleet import FastGrid

        grid = float(inspect.signature(FastGrid).parameters["poll"].default)
    except (ImportError, KeyError, TypeError, ValueError):
        grid = None  # Flower's Grid.send_and_receive: 3 s
    return {
        "superexec_task_poll_s": float(superexec) if superexec is not None else 1.0,
        "serverapp_reply_poll_s": grid if grid is not None else 3.0,
    }


def extra_variants() -> list[str]:
    """The cold launch, `--isolation process`, and the SuperExec poll interval the default does
    not use."""
    poll = poll_settings()["superexec_task_poll_s"] or 1.0
    return [
        "cold-clientapp",
        "isolation-process",
        "superexec-poll-1s" if poll < 1.0 else "superexec-poll-0.1s",
    ]


# ---- import / process-start costs ------------------------------------------------------------


def time_python(code: str, repeats: int = 3) -> float:
    """Median wall seconds of `python -c CODE` in a fresh interpreter (process start included)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=bench_env(), check=True, timeout=300
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_launch(argv: list[str], env: dict[str, str], repeats: int = 3) -> float:
    """Median wall seconds of running `argv` to completion."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, check=True, timeout=300, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def launch_costs() -> dict[str, float]:
    """`flwr-clientapp --help` (Flower's entry point: imports, argument parsing, exit) started
    cold, and through the warm launcher's shim and a zygote (what each message's launch costs
    before the clientapp contacts its SuperNode)."""
    import atoll.processes as processes
    from atoll.clientapp_launcher import start_clientapp_launcher
    from client.launcher.install import launcher_paths, wait_ready

    work = WORK / "launch-costs"
    shutil.rmtree(work, ignore_errors=True)
    env = processes.flower_env(work)
    cold = time_launch([str(processes.BIN / "flwr-clientapp"), "--help"], env)
    zygote, warm = start_clientapp_launcher("bench", work, env, work / "launcher.log")
    try:
        if not wait_ready(launcher_paths(work).socket, lambda: zygote.alive, 120):
            raise RuntimeError(f"the zygote did not start; see {zygote.log_path}")
        warm_s = time_launch(["flwr-clientapp", "--help"], warm)
        if "launched clientapp" not in zygote.log_text():
            raise RuntimeError(f"the zygote served no launch; see {zygote.log_path}")
    finally:
        zygote.stop()
    return {
        "flwr-clientapp --help, cold (fresh interpreter)": cold,
        "flwr-clientapp --help, warm (shim + zygote fork)": warm_s,
    }


def import_costs() -> dict[str, float]:
    return {
        "python -c pass": time_python("pass"),
        "import flwr": time_python("import flwr"),
        "import torch": time_python("import torch"),
        "import torch, opacus, flwr": time_python("import torch, opacus, flwr"),
        # what each message's `flwr-clientapp` process imports (the node's app before the relay
        # imported torch, opacus and the node's code: 3.73 s in the previous results)
        RELAY_IMPORT: time_python("import client.client_app"),
        # imported once per node, when its owner starts the runtime
        "import client.runtime.service (the node runtime, once)": time_python(
            "import client.runtime.service"
        ),
        **launch_costs(),
    }


# ---- starting nodes ---------------------------------------------------------------------------


@contextmanager
def process_isolation(fed: Any) -> Iterator[Callable[[str], None]]:
    """`LocalFederation.add_node` with `--isolation process` and our own `flower-superexec`.

    The SuperNode's command line gets `--isolation process` (add_node is otherwise unchanged:
    runtime, node.toml, ledger, registration); the returned function starts the node's SuperExec.
    """
    import atoll.processes as processes
    import atoll.services as services

    original = services.supernode_argv
    ports: dict[str, int] = {}

    def argv_with_isolation(**kwargs: Any) -> list[str]:
        ports["last"] = int(kwargs["port"])
        return [*original(**kwargs), "--isolation", "process"]

    def start_superexec(name: str) -> None:
        port = ports.pop("last")
        node = fed.processes[f"node:{name}"]
        processes.wait_for_port(port, timeout=60, proc=node)
        argv = [
            str(processes.BIN / "flower-superexec"),
            "--insecure",  # the SuperNode's local Runtime API is plain HTTP on loopback
            "--runtime-api-address",
            f"127.0.0.1:{port}",
        ]
        home = fed.workdir / "nodes" / name / "flwr"
        env = processes.flower_env(home)
        if fed.warm_clientapp:  # the SuperExec starts flwr-clientapp: it must find the shim
            from client.launcher.install import launcher_paths, warm_env

            env = warm_env(env, launcher_paths(home))
        fed.processes[f"superexec:{name}"] = processes.spawn(
            f"superexec-{name}", argv, fed.logs / f"{name}.log", env
        )

    services.supernode_argv = argv_with_isolation  # type: ignore[assignment]
    try:
        yield start_superexec
    finally:
        services.supernode_argv = original  # type: ignore[assignment]


# ---- audit logs: round boundaries and the nodes' own work ------------------------------------


def _epoch(ts: datetime) -> float:
    return ts.timestamp()


def coordinator_rounds(registry_url: str, run_id: str | None) -> dict[str, Any]:
    """Round boundaries from the coordinator's audit log (times in seconds since the epoch)."""
    from privacy.audit import iter_entries

    joined: list[float] = []
    replies: dict[tuple[int, str], list[float]] = {}
    for e in iter_entries(registry_url, "coordinator", subject=f"run:{run_id}" if run_id else None):
        if e.action == "node.joined":
            joined.append(_epoch(e.timestamp))
        elif e.action in ("round.reply", "round.error"):
            key = (int(e.details["round"]), str(e.details["kind"]))
            replies.setdefault(key, []).append(_epoch(e.timestamp))
    rounds = sorted({r for r, _ in replies})
    # aggregate_* notifies every reply first: the last entry is when the ServerApp aggregated
    aggregated = {f"{k}:{r}": max(ts) for (r, k), ts in replies.items()}
    start = max(joined) if joined else None
    round_s: list[float] = []
    prev = start
    for r in rounds:
        end = aggregated.get(f"evaluate:{r}", aggregated.get(f"train:{r}"))
        if prev is not None and end is not None:
            round_s.append(end - prev)
        prev = end
    return {"rounds": rounds, "start": start, "aggregated": aggregated, "round_s": round_s}


def node_requests(state_dir: Path, name: str) -> list[dict[str, Any]]:
    """Each train/evaluate request a node's runtime answered, from its own audit log."""
    from privacy.audit import iter_entries
    from privacy.ledger import DB_NAME

    out: list[dict[str, Any]] = []
    open_request: dict[str, Any] | None = None
    for e in iter_entries(f"sqlite:///{state_dir / DB_NAME}", f"node:{name}"):
        kind = e.details.get("kind")
        if e.action == "request.received":
            open_request = {"kind": kind, "received": _epoch(e.timestamp)}
        elif open_request is not None and e.action == "reply.sent" and kind == open_request["kind"]:
            out.append(
                {**open_request, "round": int(e.details["round"]), "sent": _epoch(e.timestamp)}
            )
            open_request = None
        elif e.action in ("request.refused", "request.failed"):
            open_request = None
    return [r for r in out if r["kind"] in KINDS]


def ledger_verify_seconds(state_dir: Path, repeats: int = 5) -> float:
    """Median seconds of the ledger integrity check the runtime runs before each request."""
    from privacy.ledger import Ledger

    ledger = Ledger(state_dir)
    try:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ledger.verify()
            times.append(time.perf_counter() - t0)
    finally:
        ledger.close_db()
    return statistics.median(times)


def node_work_by_round(requests: dict[str, list[dict[str, Any]]]) -> dict[int, dict[str, float]]:
    """{round: {node: seconds of its train + evaluate work in that round}}."""
    out: dict[int, dict[str, float]] = {}
    for node, reqs in requests.items():
        for r in reqs:
            per = out.setdefault(r["round"], {})
            per[node] = per.get(node, 0.0) + (r["sent"] - r["received"])
    return out


# ---- log analysis -----------------------------------------------------------------------------


def clean(line: str) -> str:
    return _ANSI.sub("", line)


def node_messages(lines: list[Stamped], node: str) -> list[dict[str, Any]]:
    """Per message handled by `node`'s SuperNode: the times its milestones were logged."""
    msgs: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for s in lines:
        if s.source != node:
            continue
        text = clean(s.line)
        if m := re.search(r"Receiving: (\S+) message", text):
            cur = {"type": m[1], "receiving": s.t}
            msgs.append(cur)
        elif cur is None:
            continue
        elif "Received successfully" in text and "received" not in cur:
            cur["received"] = s.t
        elif "Start `flwr-clientapp` process" in text and "clientapp_started" not in cur:
            cur["clientapp_started"] = s.t
        elif re.search(r"Sending: \S+ message", text) and "sending" not in cur:
            cur["sending"] = s.t
        elif "Sent successfully" in text and "sent" not in cur:
            cur["sent"] = s.t
    return msgs


def server_events(lines: list[Stamped]) -> list[tuple[float, str]]:
    """(time, event) of the ServerApp's strategy lines from the `flwr run --stream` output."""
    out = []
    for s in lines:
        if s.source != "stream":
            continue
        text = clean(s.line)
        if m := _ROUND.search(text):
            out.append((s.t, f"round {m[1]}"))
        for key in ("configure_train", "aggregate_train", "configure_evaluate"):
            if f"{key}:" in text:
                out.append((s.t, key))
        if "aggregate_evaluate:" in text:
            out.append((s.t, "aggregate_evaluate"))
        if "Strategy execution finished" in text:
            out.append((s.t, "finished"))
    return out


def stream_round_times(events: list[tuple[float, str]], rounds: int) -> list[float]:
    """Round times as the previous version measured them (stream output arrives in batches)."""
    starts = {e: t for t, e in events}
    out = []
    for k in range(1, rounds + 1):
        end = starts.get(f"round {k + 1}", starts.get("finished"))
        if f"round {k}" in starts and end is not None:
            out.append(end - starts[f"round {k}"])
    return out


def phase_breakdown(
    events: list[tuple[float, str]],
    msgs: dict[str, list[dict[str, Any]]],
    requests: dict[str, list[dict[str, Any]]],
    aggregated: dict[str, float],
    kind: str,
) -> dict[str, float]:
    """Median seconds of each segment of `kind` (train/evaluate) messages, over nodes and rounds.

    The k-th `kind` message a SuperNode logs is the k-th `kind` request its runtime answered
    (both are in order: the runtime decides one request at a time).
    """
    seg: dict[str, list[float]] = {key: [] for key, _ in SEGMENTS}
    configures = sorted(t for t, e in events if e == f"configure_{kind}")
    for node, node_msgs in msgs.items():
        mine = [m for m in node_msgs if m["type"] == kind]
        reqs = [r for r in requests.get(node, []) if r["kind"] == kind]
        for i, m in enumerate(mine):
            if i < len(configures):
                seg["dispatch_to_node_pickup"].append(m["receiving"] - configures[i])
            if i < len(reqs):
                m = {**m, "runtime_received": reqs[i]["received"], "runtime_sent": reqs[i]["sent"]}
            _diff(seg["message_download"], m, "receiving", "received")
            _diff(
                seg["superexec_pickup_process_start_flwr_import"],
                m,
                "received",
                "clientapp_started",
            )
            _diff(seg["relay_start_to_runtime"], m, "clientapp_started", "runtime_received")
            _diff(seg["node_work"], m, "runtime_received", "runtime_sent")
            _diff(seg["runtime_reply_to_push"], m, "runtime_sent", "sending")
            _diff(seg["app_import_and_work"], m, "clientapp_started", "sending")
            _diff(seg["reply_upload"], m, "sending", "sent")
            _diff(seg["message_total_on_node"], m, "receiving", "sent")
    for rnd in sorted({int(k.split(":")[1]) for k in aggregated if k.startswith(f"{kind}:")}):
        sent: list[float] = []
        for node_msgs in msgs.values():
            mine = [m for m in node_msgs if m["type"] == kind]
            if len(mine) >= rnd and "sent" in mine[rnd - 1]:
                sent.append(float(mine[rnd - 1]["sent"]))
        if sent:
            seg["last_reply_to_server_aggregate"].append(aggregated[f"{kind}:{rnd}"] - max(sent))
    return {k: round(statistics.median(v), 3) for k, v in seg.items() if v}


def _diff(out: list[float], m: dict[str, Any], a: str, b: str) -> None:
    if a in m and b in m:
        out.append(m[b] - m[a])


# ---- one configuration ------------------------------------------------------------------------


def make_silos(directory: Path, n_nodes: int, rows: int) -> list[Path]:
    directory.mkdir(parents=True)
    paths = []
    from common.synth import generate

    for i in range(n_nodes):
        path = directory / f"node-{i + 1}.csv"
        generate(rows, seed=i, departments=1, dirty=False).to_csv(path, index=False)
        paths.append(path)
    return paths


def run_config(n_nodes: int, variant: Variant, rounds: int, rows: int) -> dict[str, Any]:
    """Start a federation of `n_nodes`, run `rounds` rounds, stop it, analyse its logs."""
    from atoll.federation import LocalFederation

    workdir = WORK / f"rounds-{variant.name}-{n_nodes}"
    shutil.rmtree(workdir, ignore_errors=True)
    paths = make_silos(workdir / "silos", n_nodes, rows)
    names = [f"node-{i + 1}" for i in range(n_nodes)]
    saved = {k: os.environ.get(k) for k in variant.env}
    os.environ.update(variant.env)
    t: dict[str, float] = {}
    try:
        fed_ = LocalFederation(workdir / "fed", warm_clientapp=variant.warm_clientapp)
        with fed_ as fed, LogClock(workdir / "fed" / "logs") as clock:
            t0 = time.monotonic()
            fed.start_coordinator()
            t["superlink_start_s"] = time.monotonic() - t0
            t0 = time.monotonic()
            if variant.isolation == "process":
                with process_isolation(fed) as start_superexec:
                    for name, path in zip(names, paths, strict=True):
                        fed.add_node(name, path, CONTRACT)
                        start_superexec(name)
            else:
                for name, path in zip(names, paths, strict=True):
                    fed.add_node(name, path, CONTRACT)
            t["nodes_start_s"] = time.monotonic() - t0  # runtimes + SuperNodes
            # Everything else is the app's default run config (common.run_config.RunConfig).
            config = {
                "num-server-rounds": rounds,
                "min-nodes": n_nodes,
                "contract-path": str(CONTRACT),
            }
            outcome = fed.run(config, on_line=lambda ln: clock.mark("stream", ln), timeout=1800)
            t["flwr_run_s"] = outcome.seconds
            if outcome.exit_code != 0:
                raise RuntimeError(f"run failed (exit {outcome.exit_code}); see {fed.logs}")
            clock.stop()
            lines = clock.snapshot()
            registry_url, node_home = fed.registry_url, fed.workdir / "nodes"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    (workdir / "stamped.log").write_text(
        "".join(f"{s.t:.3f} {s.source} {clean(s.line)}\n" for s in lines)
    )
    events = server_events(lines)
    msgs = {n: node_messages(lines, n) for n in names}
    coord = coordinator_rounds(registry_url, outcome.run_id)
    requests = {n: node_requests(node_home / n / "state", n) for n in names}
    work = node_work_by_round(requests)
    round_s = coord["round_s"]
    slowest = [max(work.get(r, {}).values(), default=0.0) for r in coord["rounds"]]
    overheads = [w - s for w, s in zip(round_s, slowest, strict=False)]
    return {
        "nodes": n_nodes,
        "variant": variant.name,
        "variant_note": variant.note,
        "rows_per_node": rows,
        "rounds": rounds,
        "run_id": outcome.run_id,
        **{k: round(v, 2) for k, v in t.items()},
        "round_s": [round(x, 3) for x in round_s],
        "median_round_s": round(statistics.median(round_s), 3) if round_s else None,
        "round_source": ROUND_SOURCE,
        "round_s_stream": [round(x, 2) for x in stream_round_times(events, rounds)],
        "slowest_node_work_s": round(statistics.median(slowest), 3) if slowest else None,
        "slowest_node_work_s_by_round": [round(x, 3) for x in slowest],
        "node_work_s_by_round": {
            str(r): {n: round(v, 3) for n, v in sorted(per.items())}
            for r, per in sorted(work.items())
        },
        "node_work_source": NODE_WORK_SOURCE,
        "ledger_verify_s": round(ledger_verify_seconds(node_home / names[0] / "state"), 4),
        "overhead_s_by_round": [round(x, 3) for x in overheads],
        "overhead_s_per_round": round(statistics.median(overheads), 3) if overheads else None,
        "train": phase_breakdown(events, msgs, requests, coord["aggregated"], "train"),
        "evaluate": phase_breakdown(events, msgs, requests, coord["aggregated"], "evaluate"),
        "message_kinds_per_round": [
            k for k in KINDS if any(r["kind"] == k for rs in requests.values() for r in rs)
        ],
        "messages_seen": {n: len(m) for n, m in msgs.items()},
        "warm_launches": {n: warm_launches(workdir / "fed" / "logs", n) for n in names},
        "requests_answered": {n: len(r) for n, r in requests.items()},
        "stamped_log": str(workdir / "stamped.log"),
        "logs": str(workdir / "fed" / "logs"),
    }


def warm_launches(logs: Path, node: str) -> int:
    """How many clientapps the node's zygote forked (0 without the warm launcher)."""
    path = logs / f"{node}.launcher.log"
    return path.read_text(errors="replace").count("launched clientapp") if path.exists() else 0


# ---- output -----------------------------------------------------------------------------------


SEGMENTS = [
    ("dispatch_to_node_pickup", "server configure → SuperNode pulls it (stream, approx.)"),
    ("message_download", "message download"),
    ("superexec_pickup_process_start_flwr_import", "SuperExec pick-up + process start + flwr"),
    ("relay_start_to_runtime", "relay: pulls message + app, imports, calls the runtime"),
    ("node_work", "node runtime's own work"),
    ("runtime_reply_to_push", "runtime reply → relay pushes it to the SuperNode"),
    ("app_import_and_work", "= relay import + node work + push (old single segment)"),
    ("reply_upload", "reply upload"),
    ("last_reply_to_server_aggregate", "last reply sent → server aggregates"),
    ("message_total_on_node", "total on the node"),
]


def markdown(
    meta: dict[str, Any],
    runs: list[dict[str, Any]],
    imports: dict[str, float],
    polls: dict[str, float | None],
) -> str:
    head = [
        "variant",
        "nodes",
        "SuperLink up s",
        "nodes up s",
        "round s",
        "slowest node's work s",
        "overhead s/round",
        "flwr run s",
    ]
    rows = [
        [
            r["variant"],
            r["nodes"],
            r["superlink_start_s"],
            r["nodes_start_s"],
            " / ".join(f"{x:.2f}" for x in r["round_s"]),
            f"{r['slowest_node_work_s']:.3f}",
            f"{r['overhead_s_per_round']:.2f}",
            r["flwr_run_s"],
        ]
        for r in runs
    ]
    kinds = [k for k in KINDS if any(k in r["message_kinds_per_round"] for r in runs)]
    seg_rows = []
    for key, label in SEGMENTS:
        row = [label]
        for r in runs:
            row.append(" / ".join(str(r[k].get(key, "—")) for k in kinds))
        seg_rows.append(row)
    verify = max(r["ledger_verify_s"] for r in runs)
    if kinds == ["train"]:
        a_round = (
            "A round = one train message to every node; from round 2 on a node also evaluates "
            "the incoming global model inside that request (noised histograms), and the final "
            "model is evaluated on the finish message (not part of any round)."
        )
    else:
        a_round = "A round = a train message and an evaluate message to every node."
    return "\n".join(
        [
            "# Round overhead on the deployment engine (TLS, node auth, node runtimes, loopback)",
            "",
            f"Each node holds {runs[0]['rows_per_node']} synthetic rows; {runs[0]['rounds']} "
            "rounds with the app's default run config (FedAvg, the default model, DP-SGD with the "
            f"default fixed noise multiplier, noised evaluation). {a_round} Each node is an "
            "owner-run runtime (`atoll node "
            "runtime`: data, ledger, DP-SGD; imports torch once) plus a SuperNode whose "
            "`flwr-clientapp` runs the thin relay `client.client_app` for each message. "
            "**Round s** comes from the coordinator's audit log (round k ends when the ServerApp "
            "aggregates its last replies; round 1 starts after the roll call). **Slowest "
            "node's work** = per round, the largest over nodes of its runtime's own work for the "
            "round, from each node's audit log (`request.received` → `reply.sent`), median over "
            "rounds; **overhead** = round minus that, median over rounds. The ledger integrity "
            f"check before each request (≤ {verify * 1000:.1f} ms here, measured afterwards) "
            "counts as overhead. **This machine has 2 cores**: runtimes, SuperNodes, their "
            "`flwr-clientapp` processes and the SuperLink all share them.",
            "",
            md_table(head, rows),
            "",
            f"Where a message's time goes (median seconds over nodes and rounds, "
            f"{' / '.join(kinds)}; "
            "SuperNode events from the time each log line appeared, ~50 ms resolution; runtime "
            "events from the node's audit log; aggregation from the coordinator's audit log):",
            "",
            md_table(["segment", *(f"{r['variant']} {r['nodes']}" for r in runs)], seg_rows),
            "",
            "Fresh-interpreter costs on this machine (median of 3, measured at the start of "
            "the run). Before the relay, each message's `flwr-clientapp` imported the node's "
            "whole app (torch, opacus, pandas, the node's code): 3.73 s in the previous results "
            "on this machine.",
            "",
            md_table(["command", "seconds"], [[k, f"{v:.2f}"] for k, v in imports.items()]),
            "",
            "Reading: Flower 1.41 still starts a new `flwr-clientapp` process for every message, "
            "which pulls the message and the FAB from its SuperNode, imports the app and exits; "
            "by default that process is a fork of the node's warm launcher (`client/launcher`: "
            "a zygote with Flower's entry point imported, reached by a `flwr-clientapp` shim on "
            "the SuperNode's PATH), `cold-clientapp` is Flower's own fresh interpreter; "
            "the app is now the relay (flwr, grpc, the wire stubs), which forwards the message "
            "to the node's long-lived runtime over a Unix socket. SuperNodes poll the SuperLink "
            "every 3 s when idle; in the default configuration the ServerApp polls for replies "
            f"every {polls['serverapp_reply_poll_s']:g} s (Flower's own grid: 3 s) and the "
            f"SuperExecs poll for tasks every {polls['superexec_task_poll_s']:g} s "
            "(`FLWR_SUPEREXEC_TASK_POLL_INTERVAL`; Flower's default: 1 s). "
            "`--isolation process` only moves the SuperExec out of the SuperNode: it still "
            "launches one `flwr-clientapp` per message. Serialization is negligible here: the "
            "logreg weights are a few hundred bytes (message download/upload rows).",
            "",
            "![rounds](rounds.png)",
            "",
            meta_markdown(meta),
            *([f"- note: {meta['note']}"] if meta.get("note") else []),
        ]
    )


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in dict.fromkeys(r["variant"] for r in runs):
        rs = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["nodes"])
        ax.plot(
            [r["nodes"] for r in rs],
            [r["median_round_s"] for r in rs],
            marker="o",
            label=f"round wall time, median ({variant})",
        )
        ax.plot(
            [r["nodes"] for r in rs],
            [r["slowest_node_work_s"] for r in rs],
            marker="x",
            linestyle="--",
            label=f"slowest node's own work ({variant})",
        )
    ax.set_xlabel("nodes (2-core machine)")
    ax.set_ylabel("seconds per round")
    ax.set_title("Deployment engine: round time vs nodes' own work")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", nargs="+", type=int, default=[3, 5, 10])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--rows",
        type=int,
        default=1000,
        help="synthetic rows per node (≥ ~650: the nodes' default limits refuse an expected "
        "batch below 8 rows at their size bucket's lower end)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        default=extra_variants(),
        choices=[v for v in VARIANTS if v != "default"],
        help="extra variants, run with the smallest node count",
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--name", default="rounds", help="result file stem in bench/results/")
    p.add_argument("--note", default="", help="a remark recorded with the results (meta.note)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the results here instead of bench/results/ (quick looks, not committed)",
    )
    args = p.parse_args()
    if args.quick:
        args.nodes, args.variants = [3], []
    load = wait_for_quiet()
    t0 = time.monotonic()
    meta = run_metadata(load_average_after_wait=load, **({"note": args.note} if args.note else {}))
    imports = import_costs()
    polls = poll_settings()
    plan = [(n, VARIANTS["default"]) for n in args.nodes]
    plan += [(min(args.nodes), VARIANTS[v]) for v in args.variants]
    runs, failed = [], []
    for n, variant in plan:
        try:
            runs.append(run_config(n, variant, args.rounds, args.rows))
        except Exception as err:  # noqa: BLE001 - keep the other configurations' results
            print(f"{variant.name} {n} nodes failed: {err}", file=sys.stderr, flush=True)
            failed.append({"variant": variant.name, "nodes": n, "error": str(err)[:500]})
    finish_metadata(meta, t0)
    if failed:
        meta["failed_configurations"] = failed
    if not runs:
        raise SystemExit("every configuration failed; see the errors above")
    from bench.common import RESULTS

    out = args.out.resolve() if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "imports": imports, "poll_settings": polls, "runs": runs}
    text = markdown(meta, runs, imports, polls).replace("(rounds.png)", f"({args.name}.png)")
    if out == RESULTS:
        write_results(args.name, payload, text)
    else:
        (out / f"{args.name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        (out / f"{args.name}.md").write_text(text.rstrip() + "\n")
        print(f"wrote {out / args.name}.{{json,md}}", file=sys.stderr)
    try:  # after the numbers are safe: the plot needs the bench extras (matplotlib)
        plot(runs, out / f"{args.name}.png")
    except ImportError as err:
        print(f"no plot ({err}): pip install -e '.[bench]'", file=sys.stderr)


if __name__ == "__main__":
    main()
