"""Serving: scoring throughput and latency through the real HTTP API, next to a bare ceiling.

    .venv/bin/python -m bench.serving           # ~4 min on 2 cores
    .venv/bin/python -m bench.serving --quick   # 3 s per level, concurrency 1 and 8

A logreg model trained on the Telco training rows is published with `server.registry.Registry`
into a fresh SQLite registry; the scoring API (`server.api.app.create_app`, the real app: auth,
limits, model cache, validation, reason codes) and a bare FastAPI app (one sync POST route that
parses the same JSON body and returns a constant) are each served by `uvicorn` (1 worker, access
log off) on loopback over plain HTTP. A separate load-generating process (httpx async, keep-alive,
C concurrent requests in flight) posts single records and batches of 100 real Telco test records
for `--duration` seconds per level after a 1 s warm-up. If the API requires keys (server.api.auth),
an `app`-role key is created with `ApiKeyStore` and sent as `Authorization: Bearer ...`; its
per-key rate limit (default 20 requests/s) is raised for this benchmark, or every level would
measure the limiter. Writes bench/results/serving.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    RESULTS,
    TELCO,
    WORK,
    bench_env,
    finish_metadata,
    md_table,
    meta_markdown,
    percentile,
    run_metadata,
    wait_for_quiet,
    write_results,
)

MODEL_NAME = "telco-bench"
NO_LIMIT = 1_000_000_000


# ---- the two apps (uvicorn --factory bench.serving:atoll_app / bare_app) ---------------------


def atoll_app() -> Any:
    """The real scoring API over ATOLL_REGISTRY_URL, per-key rate limit raised if it has one."""
    from server.api.app import create_app

    params = inspect.signature(create_app).parameters
    kwargs: dict[str, Any] = {}
    if "rate_per_second" in params:
        kwargs["rate_per_second"] = float(NO_LIMIT)
    if "rate_burst" in params:
        kwargs["rate_burst"] = NO_LIMIT
    return create_app(os.environ["ATOLL_REGISTRY_URL"], **kwargs)


def bare_app() -> Any:
    """The ceiling: FastAPI + uvicorn parsing the same body and returning a constant."""
    from fastapi import FastAPI

    app = FastAPI()
    constant = {"model": MODEL_NAME, "version": 1, "predictions": [{"probability": 0.5}]}

    @app.post("/predict")
    def predict(body: dict[str, Any]) -> dict[str, Any]:
        return constant

    return app


# ---- set-up -----------------------------------------------------------------------------------


def publish_model(registry_url: str) -> int:
    """Train logreg on the pooled Telco rows (non-private, bench.plain); publish it; return rows."""
    from bench.datasets import load_silos
    from bench.dp import LocalHyper, make_config
    from bench.plain import train_plain
    from common.model import build_model, weights_to_bytes
    from server.registry import Registry

    data = load_silos("telco", workdir=WORK / "serving" / "silos")
    x, y = data.pooled_train()
    model = build_model("logreg", data.n_features)
    train_plain(model, x, y, make_config(LocalHyper(), epochs=5), seed=0)
    with Registry(registry_url) as reg:
        reg.publish(
            name=MODEL_NAME,
            task=data.contract.task,
            contract=data.contract,
            model_kind="logreg",
            n_features=data.n_features,
            weights=weights_to_bytes(model.state_dict()),
            metrics={"note": "benchmark model, centralized non-private training"},
            participants=[{"name": "bench", "train_examples": len(x)}],
            privacy={"delta": None, "epsilon_per_node": {}, "mechanism": "none (benchmark)"},
            run={"run_id": "bench-serving"},
        )
    return len(x)


def test_records(n: int) -> list[dict[str, Any]]:
    """`n` real Telco test-split records with the contract's features, numbers as JSON numbers."""
    from client.data_source import read_records
    from client.split import split_mask
    from common.contract import load_contract

    contract = load_contract(REPO / "contracts" / "telco_churn.yaml")
    frame = read_records(TELCO)
    frame = frame[split_mask(frame[contract.id])]
    frame = frame[frame["TotalCharges"].str.strip() != ""]  # keep the batch free of imputations
    records = frame[contract.feature_names].head(n).to_dict(orient="records")
    numeric = [f.name for f in contract.features if f.type == "numeric"]
    return [{k: float(v) if k in numeric else v for k, v in r.items()} for r in records]


def api_key(registry_url: str) -> str | None:
    """A scoring key if the API has authentication (server.api.auth), else None."""
    try:
        from server.api.auth import ApiKeyStore
    except ImportError:
        return None
    with ApiKeyStore.open(registry_url) as store:
        _info, key = store.create("bench-serving", "app")
    return key


def start_server(factory: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    fh = open(log, "ab")  # noqa: SIM115 - closed when the process is stopped
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdout=fh,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    from atoll.processes import wait_for_port

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{factory} exited; see {log}")
        try:
            wait_for_port(port, timeout=1)
            return proc
        except TimeoutError:
            continue
    raise TimeoutError(f"{factory} did not listen on {port}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the load generator (a separate process) -------------------------------------------------


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    body = Path(spec["body_file"]).read_bytes()
    conc = int(spec["concurrency"])
    headers = {"content-type": "application/json", **spec.get("headers", {})}
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(limits=limits, timeout=60, headers=headers) as client:
        t_measure = time.perf_counter() + float(spec["warmup"])
        t_end = t_measure + float(spec["duration"])

        async def worker() -> None:
            while True:
                t0 = time.perf_counter()
                res = await client.post(spec["url"], content=body)
                t1 = time.perf_counter()
                if t1 > t_end:
                    return
                if t0 >= t_measure:
                    latencies.append(t1 - t0)
                    statuses[res.status_code] += 1

        await asyncio.gather(*(worker() for _ in range(conc)))
    ok = statuses.get(200, 0)
    duration = float(spec["duration"])
    ms = [v * 1000 for v in latencies]
    return {
        "requests": len(latencies),
        "status_counts": {str(k): v for k, v in statuses.items()},
        "requests_per_s": ok / duration,
        "rows_per_s": ok * int(spec["records"]) / duration,
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms) if ms else None,
    }


def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the load generator in its own interpreter; return its measurements."""
    res = subprocess.run(
        [sys.executable, "-m", "bench.serving", "--load", json.dumps(spec)],
        cwd=REPO,
        env=bench_env(),
        capture_output=True,
        text=True,
        timeout=float(spec["duration"]) + 120,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def server_cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


# ---- main -------------------------------------------------------------------------------------


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]], setup: dict[str, Any]) -> str:
    table = [
        [
            r["server"],
            r["payload"],
            r["concurrency"],
            f"{r['requests_per_s']:.0f}",
            f"{r['rows_per_s']:.0f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p95_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['server_cpu_ms_per_request']:.2f}",
            ", ".join(f"{k}: {v}" for k, v in r["status_counts"].items()),
        ]
        for r in rows
    ]
    auth = "yes (`app`-role key, rate limit raised)" if setup["auth"] else "no (API has none)"
    return "\n".join(
        [
            "# Serving: the scoring API vs a bare FastAPI endpoint",
            "",
            f"Model: logreg on Telco ({setup['train_rows']} training rows), published with "
            f"`Registry.publish` into SQLite. API: `server.api.app.create_app` under uvicorn, "
            f"1 worker, HTTP on loopback, access log off; API key: {auth}; `api-torch1thread` "
            "is the same API started with `OMP_NUM_THREADS=1` (torch uses one thread per "
            "request). Bare: one sync "
            "FastAPI route parsing the same JSON and returning a constant, same uvicorn flags. "
            "Load: a separate process (httpx async, keep-alive), real Telco test records, "
            "`top_k` = 3 reason codes per record, "
            f"{setup['duration']} s per level after a 1 s warm-up. **2 cores**: the load "
            "generator (one Python process) and the server share them, so the bare endpoint's "
            "numbers are also the load generator's own ceiling.",
            "",
            md_table(
                [
                    "server",
                    "payload",
                    "concurrency",
                    "requests/s",
                    "rows/s",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "server CPU ms/request",
                    "status codes",
                ],
                table,
            ),
            "",
            "![serving](serving.png)",
            "",
            meta_markdown(meta),
        ]
    )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for server in dict.fromkeys(r["server"] for r in rows):
        for payload in dict.fromkeys(r["payload"] for r in rows):
            rs = [r for r in rows if r["server"] == server and r["payload"] == payload]
            xs = [r["concurrency"] for r in rs]
            axes[0].plot(xs, [r["rows_per_s"] for r in rs], marker="o", label=f"{server} {payload}")
            axes[1].plot(xs, [r["p95_ms"] for r in rs], marker="o", label=f"{server} {payload}")
    for ax, label in zip(axes, ["rows scored per second", "p95 latency, ms"], strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Scoring API vs bare FastAPI (2 cores, loopback)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--load", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.load:
        print(json.dumps(asyncio.run(_load(json.loads(args.load)))))
        return
    if args.quick:
        args.concurrency, args.duration = [1, 8], 3.0
    load = wait_for_quiet()
    t0 = time.monotonic()
    meta = run_metadata(load_average_after_wait=load)
    work = WORK / "serving"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    registry_url = f"sqlite:///{work / 'registry.db'}"
    train_rows = publish_model(registry_url)
    key = api_key(registry_url)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    records = test_records(args.batch)
    bodies = {
        "single": (work / "single.json", 1),
        f"batch{args.batch}": (work / "batch.json", args.batch),
    }
    for path, n in bodies.values():
        path.write_text(json.dumps({"records": records[:n], "top_k": 3}))
    env = {**bench_env(), "ATOLL_REGISTRY_URL": registry_url}
    from atoll.processes import free_port

    route = f"/models/{MODEL_NAME}/predict"
    servers = {
        "api": ("bench.serving:atoll_app", route, headers, {}),
        # Same API with torch limited to one intra-op thread (many request threads × torch's
        # own thread pool oversubscribe 2 cores).
        "api-torch1thread": ("bench.serving:atoll_app", route, headers, {"OMP_NUM_THREADS": "1"}),
        "bare": ("bench.serving:bare_app", "/predict", {}, {}),
    }
    rows = []
    for server, (factory, route, hdrs, extra_env) in servers.items():
        port = free_port()
        proc = start_server(factory, port, {**env, **extra_env}, work / f"{server}.log")
        try:
            url = f"http://127.0.0.1:{port}{route}"
            for payload, (path, n) in bodies.items():
                for conc in args.concurrency:
                    cpu0 = server_cpu_seconds(proc.pid)
                    spec = {
                        "url": url,
                        "body_file": str(path),
                        "headers": hdrs,
                        "concurrency": conc,
                        "duration": args.duration,
                        "warmup": 1.0,
                        "records": n,
                    }
                    res = run_load(spec)
                    cpu = server_cpu_seconds(proc.pid) - cpu0
                    rows.append(
                        {
                            "server": server,
                            "payload": payload,
                            "records": n,
                            "concurrency": conc,
                            **res,
                            "server_cpu_ms_per_request": 1000 * cpu / max(res["requests"], 1),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            stop_server(proc)
    finish_metadata(meta, t0)
    setup = {
        "train_rows": train_rows,
        "auth": key is not None,
        "duration": args.duration,
        "batch": args.batch,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(rows, RESULTS / "serving.png")
    write_results(
        "serving", {"meta": meta, "setup": setup, "results": rows}, markdown(meta, rows, setup)
    )


if __name__ == "__main__":
    main()
