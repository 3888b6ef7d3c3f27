"""Round overhead on the real deployment engine: 3, 5 and 10 SuperNodes on loopback with TLS.

    .venv/bin/python -m bench.rounds            # ~12 min on 2 cores
    .venv/bin/python -m bench.rounds --quick    # 3 nodes, default options only

Each configuration starts a fresh `atoll.federation.LocalFederation` (TLS SuperLink with node
authentication, one SuperNode per silo of `--rows` synthetic rows from `common.synth`), runs
`--rounds` rounds of FedAvg with DP-SGD (fixed noise multiplier, no ε calibration) and stops
everything. Flower's logs carry no timestamps, so every line of every process log is stamped when
it appears (bench/logclock.py, 50 ms polling); the run's `--stream` output is stamped too.

Reported per configuration: start-up times, wall time per round, the nodes' own work per round
(reading and validating data, one DP-SGD round and one evaluation, measured afterwards in this
process, one node at a time, with the same code and data), the overhead (round minus the slowest
node's own work), and where each message's time goes on a node (pick-up, `flwr-clientapp`
process start, imports + work, reply) next to the import times of a fresh interpreter.
Variants: Flower's default `--isolation subprocess`; `--isolation process` with a long-lived
`flower-superexec` per node that we start; and the SuperExec's task polling interval lowered
(FLWR_SUPEREXEC_TASK_POLL_INTERVAL). Writes bench/results/rounds.{json,md,png}.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Variant:
    name: str
    isolation: str = "subprocess"
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""


VARIANTS = {
    "default": Variant("default", note="Flower defaults: --isolation subprocess"),
    "isolation-process": Variant(
        "isolation-process",
        isolation="process",
        note="--isolation process + a flower-superexec per node started by us",
    ),
    "superexec-poll-0.1s": Variant(
        "superexec-poll-0.1s",
        env={"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"},
        note="default isolation, SuperExec task polling every 0.1 s instead of 1 s",
    ),
}


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


def import_costs() -> dict[str, float]:
    return {
        "python -c pass": time_python("pass"),
        "import flwr": time_python("import flwr"),
        "import torch": time_python("import torch"),
        "import torch, opacus, flwr": time_python("import torch, opacus, flwr"),
        "import client.client_app (the node's app)": time_python("import client.client_app"),
    }


# ---- the nodes' own work, measured in process ------------------------------------------------


def node_work_seconds(silo: Path, name: str, state: Path, rounds: int) -> dict[str, float]:
    """Seconds to load+validate the silo, train one DP round and evaluate, with the node's code."""
    import warnings

    from bench.dp import LocalHyper, NodeAccount, make_config
    from client.node import NodeSettings, load_node_data
    from client.training import evaluate
    from common.contract import load_contract
    from common.encoding import Encoder
    from common.model import build_model

    warnings.filterwarnings("ignore")
    contract = load_contract(CONTRACT)
    settings = NodeSettings.model_validate(
        {"node-name": name, "data": str(silo), "contract": str(CONTRACT), "state-dir": str(state)}
    )
    t0 = time.perf_counter()
    data = load_node_data(settings, contract)
    t_load = time.perf_counter() - t0
    model = build_model("logreg", Encoder(contract).n_features)
    cfg = make_config(LocalHyper(eval_noise=10.0), noise_multiplier=1.0, total_rounds=rounds)
    t0 = time.perf_counter()
    NodeAccount().train_round(model, data.x_train, data.y_train, cfg)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    params = inspect.signature(evaluate).parameters
    wanted: dict[str, Any] = {"noise": 10.0, "bins": 20, "seed": 0}
    extra = {k: v for k, v in wanted.items() if k in params}
    evaluate(model, data.x_test, data.y_test, **extra)  # noised histograms where the API has them
    t_eval = time.perf_counter() - t0
    return {
        "load_s": t_load,
        "train_s": t_train,
        "evaluate_s": t_eval,
        "round_work_s": 2 * t_load + t_train + t_eval,  # train and evaluate each load the data
    }


# ---- starting nodes ---------------------------------------------------------------------------


def add_node_process_isolation(fed: Any, name: str, data: Path) -> None:
    """Like LocalFederation.add_node, but `--isolation process` plus our own flower-superexec."""
    from atoll import pki
    from atoll.federation import CONNECTION, DEFAULT_POLICY
    from atoll.processes import (
        BIN,
        flower_env,
        free_port,
        register_node,
        spawn,
        toml_pairs,
        wait_for_port,
    )
    from privacy.ledger import Ledger

    home = fed.workdir / "nodes" / name
    Ledger.initialize(home / "state", name, DEFAULT_POLICY).close_db()
    key, pub = pki.create_node_key(home / "keys", "node")
    register_node(fed.coordinator_home / "flwr", CONNECTION, pub, name)
    node_config: dict[str, str | int | float | bool] = {
        "node-name": name,
        "data": str(data),
        "contract": str(CONTRACT),
        "state-dir": str(home / "state"),
    }
    port = free_port()
    argv = [
        str(BIN / "flower-supernode"),
        "--superlink",
        fed.node_address,
        "--root-certificates",
        str(fed.tls.ca_cert),
        "--port",
        str(port),
        "--node-config",
        toml_pairs(node_config),
        "--max-retries",
        "3",
        "--auth-supernode-private-key",
        str(key),
        "--isolation",
        "process",
    ]
    (home / "flwr").mkdir(parents=True, exist_ok=True)
    env = flower_env(home / "flwr")
    log = fed.logs / f"{name}.log"
    fed.processes[f"node:{name}"] = spawn(f"supernode-{name}", argv, log, env)
    wait_for_port(port, timeout=60, proc=fed.processes[f"node:{name}"])
    superexec = [
        str(BIN / "flower-superexec"),
        "--insecure",  # the SuperNode's local Runtime API is plain HTTP on loopback
        "--runtime-api-address",
        f"127.0.0.1:{port}",
    ]
    fed.processes[f"superexec:{name}"] = spawn(f"superexec-{name}", superexec, log, env)


# ---- log analysis -----------------------------------------------------------------------------


def clean(line: str) -> str:
    return _ANSI.sub("", line)


def node_messages(lines: list[Stamped], node: str) -> list[dict[str, Any]]:
    """Per message handled by `node`: the times of its milestones (seconds since the epoch)."""
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
        elif "Start `ClientApp` Loading" in text and "app_loading" not in cur:
            cur["app_loading"] = s.t
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


def round_times(events: list[tuple[float, str]], rounds: int) -> list[float]:
    starts = {e: t for t, e in events}
    out = []
    for k in range(1, rounds + 1):
        end = starts.get(f"round {k + 1}", starts.get("finished"))
        if f"round {k}" in starts and end is not None:
            out.append(end - starts[f"round {k}"])
    return out


def phase_breakdown(
    events: list[tuple[float, str]], msgs: dict[str, list[dict[str, Any]]], kind: str
) -> dict[str, float]:
    """Median seconds of each segment of `kind` (train/evaluate) messages, over nodes and rounds."""
    seg: dict[str, list[float]] = {
        "dispatch_to_node_pickup": [],
        "message_download": [],
        "superexec_pickup_process_start_flwr_import": [],
        "app_import_and_work": [],
        "reply_upload": [],
        "last_reply_to_server_aggregate": [],
        "message_total_on_node": [],
    }
    configures = sorted(t for t, e in events if e == f"configure_{kind}")
    aggregates = sorted(t for t, e in events if e == f"aggregate_{kind}")
    for node_msgs in msgs.values():
        mine = [m for m in node_msgs if m["type"] == kind]
        for i, m in enumerate(mine):
            if i < len(configures):
                seg["dispatch_to_node_pickup"].append(m["receiving"] - configures[i])
            _diff(seg["message_download"], m, "receiving", "received")
            _diff(
                seg["superexec_pickup_process_start_flwr_import"],
                m,
                "received",
                "clientapp_started",
            )
            _diff(seg["app_import_and_work"], m, "clientapp_started", "sending")
            _diff(seg["reply_upload"], m, "sending", "sent")
            _diff(seg["message_total_on_node"], m, "receiving", "sent")
    for i, t_agg in enumerate(aggregates):
        sent: list[float] = []
        for node_msgs in msgs.values():
            mine = [m for m in node_msgs if m["type"] == kind]
            if len(mine) > i and "sent" in mine[i]:
                sent.append(float(mine[i]["sent"]))
        if sent:
            seg["last_reply_to_server_aggregate"].append(t_agg - max(sent))
    return {k: round(statistics.median(v), 2) for k, v in seg.items() if v}


def _diff(out: list[float], m: dict[str, Any], a: str, b: str) -> None:
    if a in m and b in m:
        out.append(m[b] - m[a])


# ---- one configuration ------------------------------------------------------------------------


def run_config(n_nodes: int, variant: Variant, rounds: int, rows: int) -> dict[str, Any]:
    """Start a federation of `n_nodes`, run `rounds` rounds, stop it, analyse its logs."""
    from atoll.federation import LocalFederation
    from common.synth import generate

    workdir = WORK / f"rounds-{variant.name}-{n_nodes}"
    shutil.rmtree(workdir, ignore_errors=True)
    silos = workdir / "silos"
    silos.mkdir(parents=True)
    paths = []
    for i in range(n_nodes):
        path = silos / f"node-{i + 1}.csv"
        generate(rows, seed=i, departments=1, dirty=False).to_csv(path, index=False)
        paths.append(path)
    saved = {k: os.environ.get(k) for k in variant.env}
    os.environ.update(variant.env)
    t = {}
    try:
        with LocalFederation(workdir / "fed") as fed, LogClock(workdir / "fed" / "logs") as clock:
            t0 = time.monotonic()
            fed.start_coordinator()
            t["superlink_start_s"] = time.monotonic() - t0
            t0 = time.monotonic()
            for i, path in enumerate(paths):
                if variant.isolation == "process":
                    add_node_process_isolation(fed, f"node-{i + 1}", path)
                else:
                    fed.add_node(f"node-{i + 1}", path, CONTRACT)
            t["nodes_start_s"] = time.monotonic() - t0
            config = {
                "num-server-rounds": rounds,
                "min-nodes": n_nodes,
                "contract-path": str(CONTRACT),
                "model": "logreg",
                "target-epsilon": 0.0,
                "noise-multiplier": 1.0,
            }
            outcome = fed.run(config, on_line=lambda ln: clock.mark("stream", ln), timeout=1800)
            t["flwr_run_s"] = outcome.seconds
            if outcome.exit_code != 0:
                raise RuntimeError(f"run failed (exit {outcome.exit_code}); see {fed.logs}")
            clock.stop()
            lines = clock.snapshot()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    (workdir / "stamped.log").write_text(
        "".join(f"{s.t:.3f} {s.source} {clean(s.line)}\n" for s in lines)
    )
    names = [f"node-{i + 1}" for i in range(n_nodes)]
    events = server_events(lines)
    msgs = {n: node_messages(lines, n) for n in names}
    per_round = round_times(events, rounds)
    # One warm-up pass first: one-time costs (lazy imports inside torch/opacus) belong to the
    # process start, which each message pays anyway and which the import rows measure.
    node_work_seconds(paths[0], names[0], workdir / "work-state" / "warm-up", rounds)
    work = [
        node_work_seconds(p, n, workdir / "work-state" / n, rounds)
        for p, n in zip(paths, names, strict=True)
    ]
    slowest = max(w["round_work_s"] for w in work)
    total_work = sum(w["round_work_s"] for w in work)
    return {
        "nodes": n_nodes,
        "variant": variant.name,
        "variant_note": variant.note,
        "rows_per_node": rows,
        "rounds": rounds,
        **{k: round(v, 2) for k, v in t.items()},
        "round_seconds": [round(x, 2) for x in per_round],
        "mean_round_s": round(statistics.mean(per_round), 2) if per_round else None,
        "node_work": work,
        "slowest_node_work_s": round(slowest, 3),
        "all_nodes_work_s": round(total_work, 3),
        "overhead_per_round_s": round(statistics.mean(per_round) - slowest, 2)
        if per_round
        else None,
        "train": phase_breakdown(events, msgs, "train"),
        "evaluate": phase_breakdown(events, msgs, "evaluate"),
        "messages_seen": {n: len(m) for n, m in msgs.items()},
        "stamped_log": str(workdir / "stamped.log"),
    }


# ---- output -----------------------------------------------------------------------------------


SEGMENTS = [
    ("dispatch_to_node_pickup", "server configure → node pulls it"),
    ("message_download", "message download"),
    ("superexec_pickup_process_start_flwr_import", "SuperExec pick-up + process start + flwr"),
    ("app_import_and_work", "app imports (torch, opacus) + node work + push"),
    ("reply_upload", "reply upload"),
    ("last_reply_to_server_aggregate", "last reply → server aggregates"),
    ("message_total_on_node", "total on the node"),
]


def markdown(meta: dict[str, Any], runs: list[dict[str, Any]], imports: dict[str, float]) -> str:
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
            " / ".join(str(x) for x in r["round_seconds"]),
            f"{r['slowest_node_work_s']:.2f}",
            r["overhead_per_round_s"],
            r["flwr_run_s"],
        ]
        for r in runs
    ]
    seg_rows = []
    for key, label in SEGMENTS:
        row = [label]
        for r in runs:
            row.append(f"{r['train'].get(key, '—')} / {r['evaluate'].get(key, '—')}")
        seg_rows.append(row)
    return "\n".join(
        [
            "# Round overhead on the deployment engine (TLS, node auth, loopback)",
            "",
            f"Each SuperNode holds {runs[0]['rows_per_node']} synthetic rows; "
            f"{runs[0]['rounds']} rounds of FedAvg, DP-SGD with a fixed noise multiplier (no ε "
            "calibration), logreg. A round = train message + evaluate message to every node. "
            "'Slowest node's work' = reading+validating its data twice, one DP-SGD round and one "
            "noised evaluation, measured afterwards in this process after a warm-up, one node at a "
            "time. **This machine has 2 cores**: the nodes' `flwr-clientapp` processes "
            "(each imports torch and opacus) compete for them, so the overhead grows with nodes "
            "here faster than on one machine per node.",
            "",
            md_table(head, rows),
            "",
            "Where a message's time goes (median seconds over nodes and rounds, train / evaluate; "
            "from the time each log line appeared):",
            "",
            md_table(["segment", *(f"{r['variant']} {r['nodes']}" for r in runs)], seg_rows),
            "",
            "Fresh-interpreter costs on this machine (median of 3, measured at the start of "
            "the run):",
            "",
            md_table(["command", "seconds"], [[k, f"{v:.2f}"] for k, v in imports.items()]),
            "",
            "Reading: Flower 1.41 starts a new `flwr-clientapp` process for every message, which "
            "pulls the message and the FAB from its SuperNode, imports the app (torch, opacus, "
            "the node's code) and exits; SuperNodes poll the SuperLink every 3 s when idle, the "
            "ServerApp's grid polls for replies every 3 s, and the SuperExec polls for tasks "
            "every 1 s (`FLWR_SUPEREXEC_TASK_POLL_INTERVAL`). `--isolation process` only moves the "
            "SuperExec out of the SuperNode: it still launches one `flwr-clientapp` per message "
            "(Flower's warm executors exist only for the Kubernetes executor), so it does not "
            "remove the per-message interpreter start. Serialization is negligible here: the "
            "logreg weights are a few hundred bytes (message download/upload rows).",
            "",
            "![rounds](rounds.png)",
            "",
            meta_markdown(meta),
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
            [r["mean_round_s"] for r in rs],
            marker="o",
            label=f"round wall time ({variant})",
        )
        ax.plot(
            [r["nodes"] for r in rs],
            [r["slowest_node_work_s"] for r in rs],
            marker="x",
            linestyle="--",
            label=f"slowest node's own work ({variant})",
        )
    ax.set_xlabel("SuperNodes (2-core machine)")
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
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rows", type=int, default=500, help="synthetic rows per node")
    p.add_argument(
        "--variants",
        nargs="+",
        default=["isolation-process", "superexec-poll-0.1s"],
        choices=[v for v in VARIANTS if v != "default"],
        help="extra variants, run with the smallest node count",
    )
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.nodes, args.variants = [3], []
    load = wait_for_quiet()
    t0 = time.monotonic()
    meta = run_metadata(load_average_after_wait=load)
    imports = import_costs()
    runs = [run_config(n, VARIANTS["default"], args.rounds, args.rows) for n in args.nodes]
    runs += [
        run_config(min(args.nodes), VARIANTS[v], args.rounds, args.rows) for v in args.variants
    ]
    finish_metadata(meta, t0)
    from bench.common import RESULTS

    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(runs, RESULTS / "rounds.png")
    write_results(
        "rounds", {"meta": meta, "imports": imports, "runs": runs}, markdown(meta, runs, imports)
    )


if __name__ == "__main__":
    main()
