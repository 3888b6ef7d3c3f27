"""Scale in simulation: 10, 100, 1000 simulated nodes in Flower's simulation engine (Ray).

    .venv/bin/pip install -e '.[bench]'          # Ray (flwr[simulation]), once
    .venv/bin/python -m bench.scale              # ~5 min on 2 cores
    .venv/bin/python -m bench.scale --quick      # 10 nodes only

Runs `flwr run bench/sim_app local --federation-config "num-supernodes=N
client-resources-num-cpus=1" --run-config ... --stream` with a fresh FLWR_HOME per configuration.
The real node app cannot run in simulation as is (simulated nodes get only `partition-id` /
`num-partitions` in node_config, no data path, contract or ledger), so bench/sim_app is a small
app whose ClientApp generates its partition with `common.synth.generate` (seeded by partition id)
and trains one round with the project's own `client.training.train_dp` (DP-SGD with the run
config's defaults, `common.run_config.RunConfig`: fixed noise, equal weights as real nodes send);
its ServerApp runs Flower's FedAvg and stamps the end of every round.

Measured per configuration (nodes × rows per node): wall time of `flwr run`, time to the first
round, wall time per round, peak memory of the whole process tree (every process carrying this
configuration's FLWR_HOME: SuperLink, simulation driver, Ray workers) as summed RSS and summed
PSS (PSS splits shared pages, so it does not count torch's libraries once per process), sampled
every 0.5 s. Writes bench/results/scale.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    REPO,
    RESULTS,
    WORK,
    bench_env,
    finish_metadata,
    md_table,
    meta_markdown,
    run_metadata,
    wait_for_quiet,
    write_results,
)
from common.run_config import RunConfig

SIM_APP = REPO / "bench" / "sim_app"
FLWR = REPO / ".venv" / "bin" / "flwr"
DEFAULT_CONFIGS = [(10, 200), (100, 200), (1000, 200), (100, 2000), (100, 20000)]


def processes_of(home: Path) -> list[psutil.Process]:
    """Every live process whose environment has FLWR_HOME=home (i.e. started for this config)."""
    mine = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("FLWR_HOME") == str(home):
                mine.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return mine


@dataclass
class MemorySampler:
    """Sum RSS and PSS of a configuration's processes every `interval` seconds."""

    home: Path
    interval: float = 0.5
    samples: list[dict[str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            procs = processes_of(self.home)
            for proc in procs:
                try:
                    info = proc.memory_full_info()
                    rss += info.rss
                    pss += getattr(info, "pss", info.rss)
                except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                    continue
            self.samples.append(
                {
                    "t": time.time(),
                    "rss_mib": rss / 2**20,
                    "pss_mib": pss / 2**20,
                    "processes": len(procs),
                }
            )
            self._stop.wait(self.interval)


def stop_processes(home: Path) -> int:
    """SIGTERM, then SIGKILL, the processes started for this configuration (by PID)."""
    procs = processes_of(home)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)
    return len(procs)


def peak(samples: list[dict[str, float]], key: str, t0: float, t1: float) -> float | None:
    vals = [s[key] for s in samples if t0 <= s["t"] <= t1]
    return round(max(vals), 1) if vals else None


def run_config(nodes: int, rows: int, rounds: int, timeout: float) -> dict[str, Any]:
    """One simulation of `nodes` nodes with `rows` rows each; returns its measurements."""
    work = WORK / f"scale-{nodes}x{rows}"
    shutil.rmtree(work, ignore_errors=True)
    home = work / "flwr-home"
    home.mkdir(parents=True)
    out = work / "rounds.json"
    env = bench_env()
    env["FLWR_HOME"] = str(home)
    argv = [
        str(FLWR),
        "run",
        str(SIM_APP),
        "local",
        "--federation-config",
        f"num-supernodes={nodes} client-resources-num-cpus=1",
        "--run-config",
        f'num-server-rounds={rounds} rows-per-node={rows} out-path="{out}"',
        "--stream",
    ]
    sampler = MemorySampler(home)
    sampler.start()
    t0 = time.time()
    status = "ok"
    with open(work / "flwr-run.log", "w") as log:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            # `--stream` may keep following logs after the run ends: the ServerApp's file is
            # the signal that the run finished.
            while proc.poll() is None and not out.exists() and time.time() - t0 < timeout:
                time.sleep(0.5)
            if not out.exists():
                status = "timeout" if proc.poll() is None else f"exit {proc.returncode}"
        finally:
            t_end = time.time()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            sampler.stop()
            stopped = stop_processes(home)
    result: dict[str, Any] = {
        "nodes": nodes,
        "rows_per_node": rows,
        "rounds": rounds,
        "status": status,
        "wall_s": round(t_end - t0, 1),
        "peak_rss_mib": peak(sampler.samples, "rss_mib", t0, t_end),
        "peak_pss_mib": peak(sampler.samples, "pss_mib", t0, t_end),
        "max_processes": max((s["processes"] for s in sampler.samples), default=0),
        "processes_stopped_after": stopped,
        "log": str(work / "flwr-run.log"),
    }
    if out.exists():
        data = json.loads(out.read_text())
        marks = sorted(data["marks"], key=lambda m: m["round"])
        result["first_round_starts_after_s"] = round(marks[0]["t"] - t0, 1)
        result["rounds_detail"] = [
            {
                "round": b["round"],
                "seconds": round(b["t"] - a["t"], 2),
                "peak_rss_mib": peak(sampler.samples, "rss_mib", a["t"], b["t"]),
                "peak_pss_mib": peak(sampler.samples, "pss_mib", a["t"], b["t"]),
                "roc_auc": b["roc_auc"],
            }
            for a, b in zip(marks, marks[1:], strict=False)
        ]
        secs = [r["seconds"] for r in result["rounds_detail"]]
        steady = secs[1:] or secs  # round 1 also starts Ray's workers (imports torch)
        result["first_round_s"] = secs[0]
        result["mean_round_s"] = round(sum(steady) / len(steady), 2)
        result["ms_per_node_round"] = round(1000 * result["mean_round_s"] / nodes, 1)
    return result


def markdown(meta: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    from privacy.dp import steps_per_epoch

    q = float(RunConfig.default("sample-rate"))
    rows = []
    for r in runs:
        rounds = r.get("rounds_detail", [])
        rows.append(
            [
                r["nodes"],
                r["rows_per_node"],
                r["status"],
                r["wall_s"],
                r.get("first_round_starts_after_s", "—"),
                r.get("first_round_s", "—"),
                r.get("mean_round_s", "—"),
                r.get("ms_per_node_round", "—"),
                r["peak_rss_mib"],
                r["peak_pss_mib"],
                r["max_processes"],
                " / ".join(f"{d['roc_auc']:.3f}" for d in rounds) or "—",
            ]
        )
    return "\n".join(
        [
            "# Scale in simulation (Flower simulation engine, Ray)",
            "",
            "`flwr run bench/sim_app local` with `num-supernodes=N client-resources-num-cpus=1`: "
            "on this **2-core** machine Ray runs 2 ClientApps at a time, so a round costs about "
            "(nodes × per-node time) / 2 plus fixed costs. Each simulated node generates its "
            "synthetic rows and trains one DP-SGD round with the project's `train_dp` (the run "
            f"config's defaults: Poisson sample rate {q:g} → {steps_per_epoch(q)} steps per epoch "
            f"whatever the rows, fixed noise {RunConfig.default('noise-multiplier'):g}). "
            "Round 1 also pays for Ray starting its workers (each imports torch); later rounds "
            "show the steady cost. Memory = sum over every process of the run (SuperLink, "
            "simulation driver, Ray processes and workers): RSS counts shared libraries "
            "(torch) once per process, PSS shares them out.",
            "",
            md_table(
                [
                    "nodes",
                    "rows/node",
                    "status",
                    "flwr run s",
                    "first round starts after s",
                    "round 1 s",
                    "later rounds s (mean)",
                    "ms per node-round (later rounds)",
                    "peak RSS MiB",
                    "peak PSS MiB",
                    "processes",
                    "global AUC per round",
                ],
                rows,
            ),
            "",
            "![scale](scale.png)",
            "",
            meta_markdown(meta),
        ]
    )


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in runs if "mean_round_s" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for rows in sorted({r["rows_per_node"] for r in ok}):
        rs = sorted((r for r in ok if r["rows_per_node"] == rows), key=lambda r: r["nodes"])
        axes[0].plot(
            [r["nodes"] for r in rs],
            [r["mean_round_s"] for r in rs],
            marker="o",
            label=f"{rows} rows/node",
        )
        axes[1].plot(
            [r["nodes"] for r in rs],
            [r["peak_pss_mib"] for r in rs],
            marker="o",
            label=f"{rows} rows/node (PSS)",
        )
    labels = ["seconds per round (rounds ≥ 2)", "peak memory, MiB (PSS)"]
    for ax, label in zip(axes, labels, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("simulated nodes (2 cores)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Flower simulation: cost vs nodes and rows per node")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--configs",
        nargs="+",
        default=[f"{n}x{r}" for n, r in DEFAULT_CONFIGS],
        help="NODESxROWS, e.g. 100x200",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.configs = ["10x200"]
    load = wait_for_quiet()
    t0 = time.monotonic()
    meta = run_metadata(load_average_after_wait=load, timeout_per_config_s=args.timeout)
    runs = []
    for spec in args.configs:
        nodes, rows = (int(v) for v in spec.split("x"))
        runs.append(run_config(nodes, rows, args.rounds, args.timeout))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "rounds_detail"}), flush=True)
    finish_metadata(meta, t0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(runs, RESULTS / "scale.png")
    write_results("scale", {"meta": meta, "runs": runs}, markdown(meta, runs))


if __name__ == "__main__":
    main()
