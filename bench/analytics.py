"""Federated analytics: do the 95% intervals hold, how wide are they, how long does a query take.

    .venv/bin/python -m bench.analytics                 # 21 min on 2 cores at load 13-22
    .venv/bin/python -m bench.analytics --no-engine     # coverage and widths only: ~2 min

1. Coverage (both public data sets, each split into its silos as `bench.datasets` does): every
   query type answered in process by the nodes' own code (`client.runtime.analytics`: admission,
   exact cells, Gaussian noise) and summed by the coordinator's (`server.analytics.result_of`),
   `--reps` times with fresh noise at ε = 1 per node. A cell counts when its true pooled value is
   defined and the cell is not flagged unreliable; covered when the truth lies in the reported
   95% interval. Truth: the same query answered without noise (exact pooled count / sum / rate /
   mean / bin; a quantile of the exact pooled histogram, the quantity the DP estimate targets —
   its binning error is not noise and not in the interval). Expected: 90–99% per type.
2. Width vs ε: the median reported 95% half-width per query type at ε per node in `--epsilons`.
3. Time per query on the deployment engine (`--engine`, Telco, 3 nodes on loopback: TLS
   SuperLink, node authentication, signed app, owner-run node runtimes): the wall time of
   `flwr run` → stored result for a few queries (the federation is started once).

Writes bench/results/analytics.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.common import (
    WORK,
    finish_metadata,
    md_table,
    meta_markdown,
    run_metadata,
    wait_for_quiet,
    write_results,
)
from bench.datasets import DATASETS, load_silos
from client.analytics_data import FieldTable, field_table
from client.node import load_node_data
from client.runtime.analytics import AdmittedQuery, admit_query, answer, answered
from common.analytics_math import Query, quantiles_of, sigma_for_epsilon
from common.contract import Contract
from privacy.ledger import Policy
from server.analytics import result_of

DELTA = 1e-5
SEED = 20261202

# One query of each type per data set (group_by: contract features every silo has).
QUERIES: dict[str, dict[str, dict[str, Any]]] = {
    "telco": {
        "count": {"kind": "count", "group_by": ["Contract", "PaperlessBilling"]},
        "rate": {"kind": "rate", "field": "Churn", "group_by": ["InternetService"]},
        "sum": {"kind": "sum", "field": "MonthlyCharges", "group_by": ["PaymentMethod"]},
        "mean": {"kind": "mean", "field": "MonthlyCharges", "group_by": ["PaymentMethod"]},
        "histogram": {"kind": "histogram", "field": "tenure", "bins": 12},
        "quantile": {
            "kind": "quantile",
            "field": "MonthlyCharges",
            "bins": 50,
            "quantiles": [0.25, 0.5, 0.75],
            "group_by": ["Contract"],
        },
    },
    "bank": {
        "count": {"kind": "count", "group_by": ["marital", "education"]},
        "rate": {"kind": "rate", "field": "y", "group_by": ["contact"]},
        "sum": {"kind": "sum", "field": "campaign", "group_by": ["marital"]},
        "mean": {"kind": "mean", "field": "age", "group_by": ["education"]},
        "histogram": {"kind": "histogram", "field": "month"},
        "quantile": {
            "kind": "quantile",
            "field": "age",
            "bins": 41,
            "quantiles": [0.25, 0.5, 0.75],
            "group_by": ["marital"],
        },
    },
}
ENGINE_QUERIES = ("count", "rate", "mean")


@dataclass
class Federation:
    contract: Contract
    tables: dict[str, FieldTable]


def _federation(name: str) -> Federation:
    data = load_silos(name)
    tables = {
        s.name: field_table(load_node_data(str(s.csv), data.contract), data.contract)
        for s in data.silos
    }
    return Federation(data.contract, tables)


def _admit(spec: dict[str, Any], contract: Contract, sigma: float) -> AdmittedQuery:
    q = Query.model_validate({**spec, "noise_multiplier": sigma})
    return admit_query(q.to_pb(contract.hash), contract, Policy(cap_epsilon=1e9))


def _rows(aq: AdmittedQuery, fed: Federation, noise: Any) -> list[dict[str, Any]]:
    answers = {
        n: answered(aq, *answer(aq, t, fed.contract, noise), n) for n, t in fed.tables.items()
    }
    return result_of(aq.query, aq.layout, answers)["rows"]


def _truth(aq: AdmittedQuery, fed: Federation) -> list[float | None]:
    """The true pooled value of every row `finish` reports, in the same order."""
    if aq.query.kind != "quantile":
        return [r["estimate"] for r in _rows(aq, fed, np.zeros)]
    # the exact pooled histogram's quantiles: what the noisy histogram's quantile estimates
    out: list[float | None] = []
    answers = [answer(aq, t, fed.contract, np.zeros)[0] for t in fed.tables.values()]
    pooled = np.sum(answers, axis=0)
    edges = np.asarray(aq.layout.edges, dtype=float)
    for cell in pooled:
        out.extend(quantiles_of(cell, edges, aq.query.quantiles))
    return [None if v is None or np.isnan(v) else float(v) for v in out]


def coverage(name: str, fed: Federation, reps: int, epsilon: float) -> dict[str, Any]:
    sigma = sigma_for_epsilon(epsilon, DELTA)
    rng = np.random.default_rng(SEED)
    out: dict[str, Any] = {}
    for kind, spec in QUERIES[name].items():
        aq = _admit(spec, fed.contract, sigma)
        truth = _truth(aq, fed)
        covered = counted = 0
        t0 = time.perf_counter()
        for _ in range(reps):
            for r, true in zip(_rows(aq, fed, rng.standard_normal), truth, strict=True):
                if true is None or r["unreliable"] or r["low"] is None:
                    continue
                counted += 1
                covered += r["low"] <= true <= r["high"]
        out[kind] = {
            "cells_per_rep": len(truth),
            "cells_counted": counted,
            "covered": covered,
            "coverage": covered / counted if counted else None,
            "seconds_per_rep": (time.perf_counter() - t0) / reps,
        }
        print(f"  {name} {kind}: coverage {out[kind]['coverage']:.3f} over {counted} cells")
    return out


def widths(name: str, fed: Federation, epsilons: list[float], reps: int) -> dict[str, Any]:
    rng = np.random.default_rng(SEED + 1)
    out: dict[str, dict[str, float | None]] = {}
    for kind, spec in QUERIES[name].items():
        out[kind] = {}
        for eps in epsilons:
            aq = _admit(spec, fed.contract, sigma_for_epsilon(eps, DELTA))
            half = [
                (r["high"] - r["low"]) / 2
                for _ in range(reps)
                for r in _rows(aq, fed, rng.standard_normal)
                if r["low"] is not None and not r["unreliable"]
            ]
            out[kind][str(eps)] = statistics.median(half) if half else None
    return out


def engine_times(runs: int) -> dict[str, Any]:
    """Wall time of a query on the deployment engine (Telco, 3 nodes, loopback)."""
    from atoll.federation import LocalFederation
    from atoll.partition import partition_csv
    from server.query_store import QueryStore

    spec = DATASETS["telco"]
    work = WORK / "analytics-engine"
    shutil.rmtree(work, ignore_errors=True)
    policy = Policy(
        cap_epsilon=1000, delta=DELTA, allowed_purposes=["training", "evaluation", "analytics"]
    )
    timings: dict[str, list[float]] = {}
    with LocalFederation(work / "fed") as fed:
        t0 = time.monotonic()
        parts = partition_csv(spec.csv, spec.partition_by, spec.nodes, work / "silos")
        fed.start_coordinator()
        for part in parts:
            fed.add_node(part.name, part.path, spec.contract, policy=policy)
        startup = time.monotonic() - t0
        for _ in range(runs):
            for kind in ENGINE_QUERIES:
                query = {**QUERIES["telco"][kind], "epsilon": 1.0}
                outcome = fed.run(
                    {
                        "contract-path": str(spec.contract),
                        "query": json.dumps(query),
                        "min-nodes": spec.nodes,
                        "round-timeout": 120,
                    },
                    timeout=600,
                )
                store = QueryStore(fed.registry_url)
                row = store.by_run(str(outcome.run_id)) if outcome.run_id else None
                store.close()
                if outcome.exit_code != 0 or row is None or row.status != "answered":
                    raise RuntimeError(f"query {kind} failed; see {fed.logs / 'runs.log'}")
                timings.setdefault(kind, []).append(outcome.seconds)
                print(f"  engine {kind}: {outcome.seconds:.1f} s")
    return {
        "nodes": spec.nodes,
        "startup_seconds": startup,
        "seconds": timings,
        "median_seconds": {k: statistics.median(v) for k, v in timings.items()},
    }


def _plot(result: dict[str, Any], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["widths"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2))
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        for kind, by_eps in result["widths"][name].items():
            xs = [float(e) for e, w in by_eps.items() if w]
            ys = [w for w in by_eps.values() if w]
            base = ys[len(ys) // 2] if ys else 1.0
            ax.plot(xs, [y / base for y in ys], marker="o", label=kind)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel("ε per node")
        ax.set_ylabel("median 95% half-width (relative to ε=1)")
        ax.set_title(f"{name}: interval width vs ε")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _markdown(result: dict[str, Any]) -> str:
    eps = result["coverage_epsilon"]
    lines = [
        "# Federated analytics: interval coverage, width vs ε, time per query",
        "",
        meta_markdown(result["meta"]),
        "",
        f"## Coverage of the reported 95% intervals (ε = {eps:g} per node, δ = {DELTA:g}, "
        f"{result['reps']} repetitions; expected 90–99%)",
        "",
    ]
    rows = []
    for name, by_kind in result["coverage"].items():
        for kind, c in by_kind.items():
            cov = c["coverage"]
            ok = "yes" if cov is not None and 0.90 <= cov <= 0.99 else "NO"
            rows.append(
                [name, kind, c["cells_counted"], f"{cov:.3f}" if cov is not None else "-", ok]
            )
    lines += [md_table(["data set", "query", "cells counted", "coverage", "in 90–99%"], rows), ""]
    lines += ["## Median 95% half-width vs ε per node", ""]
    for name, by_kind in result["widths"].items():
        epsilons = list(next(iter(by_kind.values())))
        header = ["query", *[f"ε={e}" for e in epsilons]]
        body = [
            [kind, *[f"{w:.4g}" if w is not None else "-" for w in by_eps.values()]]
            for kind, by_eps in by_kind.items()
        ]
        lines += [f"### {name}", "", md_table(header, body), ""]
    lines.append("![width vs ε](analytics.png)")
    engine = result.get("engine")
    if engine:
        lines += [
            "",
            f"## Time per query on the deployment engine (Telco, {engine['nodes']} nodes)",
            "",
            f"Federation start-up {engine['startup_seconds']:.1f} s (once).",
            "",
            md_table(
                ["query", "runs", "median s", "all s"],
                [
                    [
                        k,
                        len(v),
                        f"{engine['median_seconds'][k]:.1f}",
                        ", ".join(f"{x:.1f}" for x in v),
                    ]
                    for k, v in engine["seconds"].items()
                ],
            ),
        ]
    lines += [
        "",
        "Notes: counts, sums and bins have exact Gaussian intervals; rates and means use the "
        "delta method; quantiles the union of the percentile and basic parametric-bootstrap "
        "intervals of the noisy histogram (their truth here is the exact pooled histogram's "
        "quantile, so binning error is excluded). Cells flagged unreliable (noisy count below "
        "20) or with no true value are not counted. The engine times are wall times of "
        "`flwr run` to the stored result, measured while other sessions loaded the 2 cores "
        "(load averages above): they include the ServerApp's and each node's app start-up "
        "under that load, not the query's own work (milliseconds per node, `seconds_per_rep`).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200, help="Repetitions for coverage (≥ 50)")
    parser.add_argument("--width-reps", type=int, default=10)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--engine-runs", type=int, default=2, help="Runs of each engine query")
    parser.add_argument("--no-engine", dest="engine", action="store_false")
    args = parser.parse_args()
    t0 = time.monotonic()
    meta = run_metadata(seeds=[SEED, SEED + 1], load_before=wait_for_quiet())
    result: dict[str, Any] = {
        "meta": meta,
        "reps": args.reps,
        "coverage_epsilon": 1.0,
        "coverage": {},
        "widths": {},
        "queries": QUERIES,
    }
    for name in ("telco", "bank"):
        print(f"{name}: loading silos")
        fed = _federation(name)
        result["coverage"][name] = coverage(name, fed, args.reps, 1.0)
        result["widths"][name] = widths(name, fed, args.epsilons, args.width_reps)
    if args.engine:
        print("deployment engine")
        result["engine"] = engine_times(args.engine_runs)
    finish_metadata(meta, t0)
    json_path, md_path = write_results("analytics", result, _markdown(result))
    _plot(result, json_path.with_suffix(".png"))
    print(f"wrote {json_path}, {md_path}")


if __name__ == "__main__":
    main()
