"""Serving: scoring throughput and latency through the real HTTP API, next to a bare ceiling.

    .venv/bin/python -m bench.serving           # ~12 min on 2 cores (all variants)
    .venv/bin/python -m bench.serving --quick   # 3 s per level, concurrency 1 and 8
    .venv/bin/python -m bench.serving --servers bare api   # a subset of the variants

A logreg model trained on the Telco training rows is published with `server.registry.Registry`
into a fresh SQLite registry (and a fresh PostgreSQL schema for the `-pg` variants); the scoring
API (`server.api.app.create_app`, the real app: auth with an `app`-role key, per-key rate limit,
model cache, validation, reason codes, the signed audit log of every call) and a bare FastAPI
app (one sync POST route that parses the same JSON body and returns a constant) are each served
by `uvicorn` (access log off) on loopback over plain HTTP. Variants:

    bare        bare FastAPI, 1 worker             (the ceiling for the 1-worker variants)
    api         the API, 1 worker, SQLite registry and audit log, in-process rate limiter
    api-redis   ... with the per-key rate limiter in Redis (127.0.0.1:6379)
    api-pg      ... with PostgreSQL (127.0.0.1:5432, db `test`) as registry and audit log
    bare-2w     bare FastAPI, 2 workers            (the ceiling for the 2-worker variants)
    api-2w      the API, 2 workers, SQLite, Redis rate limiter (required with workers > 1)
    api-pg-2w   the API, 2 workers, PostgreSQL, Redis rate limiter

All servers are started first and stay up; each (payload, concurrency) level is then measured on
every server back to back, so every api/bare pair comes from the same minute of the same run. A
separate load-generating process (httpx async, C keep-alive connections — one client each — with
one request in flight on each) posts
single records and batches of 100 real Telco test records with `top_k` = 3 for `--duration`
seconds per level after a 1 s warm-up. The per-key rate limit is raised for this benchmark (or
every level would measure the limiter), but still enforced (its bucket is taken per request).
Writes bench/results/serving.{json,md,png}: `rows` (one per server, payload, concurrency) and
`ratios` (each API variant against its bare ceiling, same payload and concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
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
PUBLISHING_KEY = WORK / "serving" / "keys" / "publishing.pem"  # signs the rows it publishes
NO_LIMIT = 1_000_000_000
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("ATOLL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Server:
    """One served variant: what runs, how many workers, on which databases and limiter."""

    factory: str
    workers: int = 1
    database: str = "sqlite"  # sqlite | postgresql: the registry, keys and audit log
    limiter: str = "memory"  # memory | redis: the per-key rate limiter
    ceiling: str | None = None  # the bare server its ratios are taken against

    @property
    def is_api(self) -> bool:
        return self.ceiling is not None


SERVERS: dict[str, Server] = {
    "bare": Server("bench.serving:bare_app"),
    "api": Server("bench.serving:atoll_app", ceiling="bare"),
    "api-redis": Server("bench.serving:atoll_app", limiter="redis", ceiling="bare"),
    "api-pg": Server("bench.serving:atoll_app", database="postgresql", ceiling="bare"),
    "bare-2w": Server("bench.serving:bare_app", workers=2),
    "api-2w": Server("bench.serving:atoll_app", workers=2, limiter="redis", ceiling="bare-2w"),
    "api-pg-2w": Server(
        "bench.serving:atoll_app",
        workers=2,
        database="postgresql",
        limiter="redis",
        ceiling="bare-2w",
    ),
}


# ---- the two apps (uvicorn --factory bench.serving:atoll_app / bare_app) ---------------------


def atoll_app() -> Any:
    """The real scoring API over ATOLL_REGISTRY_URL (per-key rate limit raised; in Redis when
    ATOLL_RATE_LIMIT_URL is set; signing key BENCH_AUDIT_KEY when set)."""
    from server.api.app import create_app

    kwargs: dict[str, Any] = {"rate_per_second": float(NO_LIMIT), "rate_burst": NO_LIMIT}
    if url := os.environ.get("ATOLL_RATE_LIMIT_URL"):
        kwargs["rate_limit_url"] = url
    if key := os.environ.get("BENCH_AUDIT_KEY"):
        kwargs["audit_key"] = Path(key)
    pinned = [PUBLISHING_KEY.with_suffix(".pub")]  # the registry row must verify, as in production
    return create_app(os.environ["ATOLL_REGISTRY_URL"], registry_public_keys=pinned, **kwargs)


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
    from server.registry_signing import load_publishing_key

    data = load_silos("telco", workdir=WORK / "serving" / "silos")
    x, y = data.pooled_train()
    model = build_model("logreg", data.n_features)
    train_plain(model, x, y, make_config(LocalHyper(), epochs=5), seed=0)
    with Registry(registry_url, signer=load_publishing_key(PUBLISHING_KEY)) as reg:
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


def start_server(
    factory: str, port: int, env: dict[str, str], log: Path, workers: int = 1
) -> subprocess.Popen:
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
        str(workers),
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
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    # One client (one keep-alive connection) per worker: a single httpx pool shared by C
    # connections costs the load generator O(C) per request, and at C = 32 it measured itself
    # (a bare endpoint fell from ~590 to ~150 requests/s) instead of the server.
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(limits=one, timeout=60, headers=headers) for _ in range(conc)]
    t_measure = time.perf_counter() + float(spec["warmup"])
    t_end = t_measure + float(spec["duration"])

    async def worker(client: httpx.AsyncClient) -> None:
        async with client:
            while True:
                t0 = time.perf_counter()
                res = await client.post(spec["url"], content=body)
                t1 = time.perf_counter()
                if t1 > t_end:
                    return
                if t0 >= t_measure:
                    latencies.append(t1 - t0)
                    statuses[res.status_code] += 1

    await asyncio.gather(*(worker(client) for client in clients))
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
    """CPU time of the server and its worker processes."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A registry URL into a fresh schema of the local PostgreSQL (dropped afterwards)."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(PG_URL)
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    schema = f"bench_serving_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
                hide_password=False
            )
        finally:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


# ---- main -------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def aggregate(rounds: list[dict[str, Any]], servers: dict[str, Server]) -> list[dict[str, Any]]:
    """One row per (server, payload, concurrency): the median of its rounds for each measure,
    status codes and server CPU summed over the rounds."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rounds:
        groups.setdefault((r["server"], r["payload"], r["concurrency"]), []).append(r)
    rows = []
    for (name, payload, conc), rs in groups.items():
        spec = servers[name]
        statuses: Counter[str] = Counter()
        for r in rs:
            statuses.update(r["status_counts"])
        requests = sum(r["requests"] for r in rs)
        rows.append(
            {
                "server": name,
                "workers": spec.workers,
                "database": spec.database if spec.is_api else None,
                "limiter": spec.limiter if spec.is_api else None,
                "payload": payload,
                "records": rs[0]["records"],
                "concurrency": conc,
                "rounds": len(rs),
                "requests": requests,
                "status_counts": dict(statuses),
                **{
                    k: _median([r[k] for r in rs if r[k] is not None])
                    for k in ("requests_per_s", "rows_per_s", "p50_ms", "p95_ms", "p99_ms")
                },
                "rounds_requests_per_s": [round(r["requests_per_s"], 1) for r in rs],
                "rounds_p99_ms": [round(r["p99_ms"], 1) for r in rs],
                "server_cpu_ms_per_request": 1000
                * sum(r["server_cpu_seconds"] for r in rs)
                / max(requests, 1),
            }
        )
    return rows


def ratio_rows(
    rows: list[dict[str, Any]], rounds: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Each API variant against its bare ceiling at the same payload and concurrency: the
    median over rounds of the ratio within a round (the two ran back to back), or of the
    aggregated rows when no rounds are given."""
    by_key: dict[tuple[str, str, int, int], dict[str, Any]] = {}
    for r in rounds if rounds is not None else rows:
        by_key[(r["server"], r["payload"], r["concurrency"], r.get("round", 0))] = r
    out = []
    for row in rows:
        spec = SERVERS.get(row["server"])
        if spec is None or not spec.is_api:
            continue
        throughput, p99 = [], []
        for (server, payload, conc, rnd), r in by_key.items():
            if (server, payload, conc) != (row["server"], row["payload"], row["concurrency"]):
                continue
            bare = by_key.get((spec.ceiling or "", payload, conc, rnd))
            if bare is None or not bare["rows_per_s"]:
                continue
            throughput.append(r["rows_per_s"] / bare["rows_per_s"])
            if bare["p99_ms"]:
                p99.append(r["p99_ms"] / bare["p99_ms"])
        if not throughput:
            continue
        out.append(
            {
                "server": row["server"],
                "ceiling": spec.ceiling,
                "payload": row["payload"],
                "concurrency": row["concurrency"],
                "throughput_ratio": _median(throughput),
                "p99_ratio": _median(p99) if p99 else None,
                "rounds_throughput_ratio": [round(v, 3) for v in throughput],
                "rounds_p99_ratio": [round(v, 3) for v in p99],
            }
        )
    return out


def checks(rows: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> list[str]:
    """The targets of the issue, as measured in this run (1-worker API vs bare)."""

    def ratio(payload: str, conc: int, field: str = "throughput_ratio") -> float | None:
        for q in ratios:
            if (q["server"], q["payload"], q["concurrency"]) == ("api", payload, conc):
                return q[field]
        return None

    lines = []
    for payload, conc, target in (
        ("single", 1, 0.6),
        ("single", 8, 0.7),
        ("single", 32, 0.7),
        ("batch100", 1, 0.3),
        ("batch100", 8, 0.3),
        ("batch100", 32, 0.3),
    ):
        got = ratio(payload, conc)
        if got is not None:
            ok = "met" if got >= target else "NOT met"
            lines.append(
                f"- {payload}, concurrency {conc}: {got:.2f}× bare (target ≥ {target}): {ok}"
            )
    p99 = ratio("single", 8, "p99_ratio")
    if p99 is not None:
        ok = "met" if p99 <= 2 else "NOT met"
        lines.append(f"- p99 at concurrency 8 (single): {p99:.2f}× bare's (target ≤ 2): {ok}")
    for server in dict.fromkeys(r["server"] for r in rows):
        if not SERVERS.get(server, Server("")).is_api:
            continue
        for payload in dict.fromkeys(r["payload"] for r in rows):
            rs = sorted(
                (r for r in rows if r["server"] == server and r["payload"] == payload),
                key=lambda r: r["concurrency"],
            )
            if len(rs) < 2:
                continue
            worst = min(b["requests_per_s"] / a["requests_per_s"] for a, b in pairwise(rs))
            trend = " → ".join(f"{r['requests_per_s']:.0f}" for r in rs)
            ok = "does not fall" if worst >= 0.9 else "FALLS"
            lines.append(
                f"- {server} {payload}: requests/s by concurrency {trend} ({ok}; worst step "
                f"{worst:.2f}×, noise allowance 0.9×)"
            )
    return lines


def markdown(
    meta: dict[str, Any],
    rows: list[dict[str, Any]],
    ratios: list[dict[str, Any]],
    setup: dict[str, Any],
) -> str:
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
        for r in sorted(
            rows,
            key=lambda r: (
                list(SERVERS).index(r["server"]) if r["server"] in SERVERS else 99,
                r["payload"] != "single",
                r["concurrency"],
            ),
        )
    ]
    ratio_table = [
        [
            q["server"],
            q["ceiling"],
            q["payload"],
            q["concurrency"],
            f"{q['throughput_ratio']:.2f}×",
            f"{q['p99_ratio']:.2f}×" if q["p99_ratio"] is not None else "—",
        ]
        for q in ratios
    ]
    variants = ", ".join(f"`{name}`" for name in setup["servers"])
    return "\n".join(
        [
            "# Serving: the scoring API vs a bare FastAPI endpoint",
            "",
            f"Model: logreg on Telco ({setup['train_rows']} training rows), published with "
            "`Registry.publish`. API: `server.api.app.create_app` under uvicorn, HTTP on "
            "loopback, access log off, an `app`-role API key on every request (per-key rate "
            "limit raised, still taken per request), every call written to the signed `api` "
            "audit log (group commit) before it is answered. Bare: one sync FastAPI route "
            "parsing the same JSON and returning a constant, same uvicorn flags. Variants "
            f"({variants}): see `bench/serving.py`; `-2w` = 2 uvicorn workers (with the rate "
            "limiter in Redis), `-pg` = PostgreSQL registry and audit log, `-redis` = the "
            "1-worker API with the rate limiter in Redis. Load: a separate process (httpx "
            "async, C keep-alive connections with one client each — a single shared httpx pool "
            "made the load generator itself the bottleneck at C = 32), real Telco test "
            "records, `top_k` = 3 reason codes per record, "
            "each server first warmed up for 2 s per payload; then each level is measured in "
            f"{setup['rounds']} interleaved rounds of {setup['duration']} s (after 0.5 s of "
            "warm-up each), the servers back to back and in reversed order every other round; "
            "a row is the median of its rounds, a ratio the median of the rounds' ratios. "
            "**2 cores**, shared with the load generator (and with other engineers' test "
            "runs — see the load average below): compare ratios within this run, not absolute "
            "numbers across runs.",
            "",
            "## Against the targets (1 worker, SQLite: `api` / `bare`)",
            "",
            *checks(rows, ratios),
            "",
            "## Ratios (same run, same payload and concurrency)",
            "",
            md_table(
                ["server", "against", "payload", "concurrency", "rows/s ratio", "p99 ratio"],
                ratio_table,
            ),
            "",
            "## All measurements",
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

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    servers = list(dict.fromkeys(r["server"] for r in rows))
    colours = plt.get_cmap("tab10")
    for k, server in enumerate(servers):  # a colour per server, a line style per payload
        for payload in dict.fromkeys(r["payload"] for r in rows):
            rs = sorted(
                (r for r in rows if r["server"] == server and r["payload"] == payload),
                key=lambda r: r["concurrency"],
            )
            xs = [r["concurrency"] for r in rs]
            style = {
                "color": colours(k % 10),
                "linestyle": "-" if payload == "single" else "--",
                "marker": "s" if server.startswith("bare") else "o",
                "label": f"{server} {payload}",
            }
            axes[0].plot(xs, [r["rows_per_s"] for r in rs], **style)
            axes[1].plot(xs, [r["p99_ms"] for r in rs], **style)
    for ax, label in zip(axes, ["rows scored per second", "p99 latency, ms"], strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("Scoring API vs bare FastAPI (2 cores, loopback)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per round and level")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per level (median)")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--servers", nargs="+", choices=list(SERVERS), default=list(SERVERS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="serving", help="result file name under bench/results")
    p.add_argument("--load", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.load:
        print(json.dumps(asyncio.run(_load(json.loads(args.load)))))
        return
    if args.quick:
        args.concurrency, args.duration, args.rounds = [1, 8], 3.0, 1
    for name in list(args.servers):  # a variant needs its ceiling in the same run
        ceiling = SERVERS[name].ceiling
        if ceiling is not None and ceiling not in args.servers:
            args.servers.insert(0, ceiling)
    servers = {name: SERVERS[name] for name in SERVERS if name in args.servers}
    load = wait_for_quiet()
    t0 = time.monotonic()
    meta = run_metadata(load_average_after_wait=load)
    work = WORK / "serving"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    records = test_records(args.batch)
    bodies = {
        "single": (work / "single.json", 1),
        f"batch{args.batch}": (work / "batch.json", args.batch),
    }
    for path, n in bodies.values():
        path.write_text(json.dumps({"records": records[:n], "top_k": 3}))
    route = f"/models/{MODEL_NAME}/predict"
    from atoll.processes import free_port

    with contextlib.ExitStack() as stack:
        registries = {"sqlite": f"sqlite:///{work / 'registry.db'}"}
        if any(s.database == "postgresql" for s in servers.values()):
            registries["postgresql"] = stack.enter_context(postgres_schema())
        train_rows, keys = 0, {}
        for database, url in registries.items():
            train_rows = publish_model(url)
            keys[database] = api_key(url)
        procs: dict[str, tuple[subprocess.Popen, str, dict[str, str]]] = {}
        try:
            for name, spec in servers.items():
                env = {**bench_env()}
                headers: dict[str, str] = {}
                if spec.is_api:
                    env["ATOLL_REGISTRY_URL"] = registries[spec.database]
                    env["BENCH_AUDIT_KEY"] = str(work / "audit" / spec.database / "api.pem")
                    if spec.limiter == "redis":
                        env["ATOLL_RATE_LIMIT_URL"] = REDIS_URL
                    headers = {"authorization": f"Bearer {keys[spec.database]}"}
                port = free_port()
                proc = start_server(spec.factory, port, env, work / f"{name}.log", spec.workers)
                url = f"http://127.0.0.1:{port}{route if spec.is_api else '/predict'}"
                procs[name] = (proc, url, headers)
            for _proc, url, headers in procs.values():  # first requests: loads, caches
                for path, n in bodies.values():
                    run_load(
                        {
                            "url": url,
                            "body_file": str(path),
                            "headers": headers,
                            "concurrency": 8,
                            "duration": 2.0,
                            "warmup": 0.5,
                            "records": n,
                        }
                    )
            rounds: list[dict[str, Any]] = []
            for payload, (path, n) in bodies.items():
                for conc in args.concurrency:
                    for r in range(args.rounds):
                        # servers back to back, the order reversed every other round, so that no
                        # variant is always measured right after the same neighbour
                        order = list(procs) if r % 2 == 0 else list(reversed(procs))
                        for name in order:
                            proc, url, headers = procs[name]
                            cpu0 = server_cpu_seconds(proc.pid)
                            res = run_load(
                                {
                                    "url": url,
                                    "body_file": str(path),
                                    "headers": headers,
                                    "concurrency": conc,
                                    "duration": args.duration,
                                    "warmup": 0.5,
                                    "records": n,
                                }
                            )
                            cpu = server_cpu_seconds(proc.pid) - cpu0
                            rounds.append(
                                {
                                    "server": name,
                                    "payload": payload,
                                    "records": n,
                                    "concurrency": conc,
                                    "round": r,
                                    **res,
                                    "server_cpu_seconds": cpu,
                                }
                            )
                            print(json.dumps(rounds[-1]), flush=True)
            rows = aggregate(rounds, servers)
        finally:
            for proc, _url, _headers in procs.values():
                stop_server(proc)
    finish_metadata(meta, t0)
    ratios = ratio_rows(rows, rounds)
    setup = {
        "train_rows": train_rows,
        "auth": True,
        "duration": args.duration,
        "rounds": args.rounds,
        "batch": args.batch,
        "servers": list(servers),
        "variants": {name: vars(spec) for name, spec in servers.items()},
        "redis": REDIS_URL if any(s.limiter == "redis" for s in servers.values()) else None,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(rows, RESULTS / f"{args.out}.png")
    write_results(
        args.out,
        {"meta": meta, "setup": setup, "rows": rows, "ratios": ratios, "rounds": rounds},
        markdown(meta, rows, ratios, setup).replace("serving.png", f"{args.out}.png"),
    )


if __name__ == "__main__":
    main()
