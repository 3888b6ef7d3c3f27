"""Cost of DP-SGD: time per epoch and peak memory, private vs non-private, same model and data.

    .venv/bin/python -m bench.dp_cost           # ~3 min on 2 cores
    .venv/bin/python -m bench.dp_cost --quick   # smoke size

For each data set (pooled training rows of Telco and of bank marketing), model (`logreg`, `mlp`)
and expected batch size (64, 256), a fresh subprocess loads the data and trains:

- private: the node's own `client.training.train_dp`, called as the node runtime calls it
  (Opacus, per-sample gradients, clipping, Poisson sampling, the run config's default fixed noise
  multiplier, `public_rows` = the size bucket's lower end) — one call = one round with its set-up;
- non-private: `bench.plain.train_plain` (same update rule, no clipping or noise) with the same
  model, data and batch size.

Reported per configuration: seconds per 1-epoch round (median of `--repeats` calls after a
warm-up call), the marginal seconds per extra epoch (from a 3-epoch call), the slowdown
private/non-private, and peak RSS of the process (ru_maxrss) after loading vs after training.
Writes bench/results/dp_cost.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

from bench.common import (
    REPO,
    bench_env,
    finish_metadata,
    md_table,
    meta_markdown,
    run_metadata,
    wait_for_quiet,
    write_results,
)
from common.run_config import RunConfig
from privacy.dp import describe_clip


def maxrss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this (fresh) process and return its measurements."""
    import torch

    torch.set_num_threads(1)
    from bench.datasets import load_silos
    from bench.dp import LocalHyper, make_config, train_round_dp
    from bench.plain import train_plain
    from common.model import build_model

    logging.getLogger("opacus").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    data = load_silos(spec["dataset"], workdir=REPO / "runs" / "bench" / f"dp-cost-{spec['id']}")
    x, y = data.pooled_train()
    n = len(x)
    batch = int(spec["batch"])
    hyper = LocalHyper(sample_rate=batch / n)
    rss_loaded = maxrss_mib()

    def one_call(epochs: int, seed: int) -> float:
        torch.manual_seed(seed)
        model = build_model(spec["model"], data.n_features)
        cfg = make_config(hyper, epochs=epochs)  # fixed noise: the run config's default
        t0 = time.perf_counter()
        if spec["private"]:
            train_round_dp(model, x, y, cfg, seed)  # training only (accounting is the ledger's)
        else:
            train_plain(model, x, y, cfg, seed)
        return time.perf_counter() - t0

    for s in range(3):  # warm-up: first calls pay lazy imports, allocator and thread start-up
        one_call(1, 900 + s)
    # Interleaved 1-epoch and 3-epoch calls; the median is robust to other load on the machine.
    rounds, threes = [], []
    for s in range(spec["repeats"]):
        rounds.append(one_call(1, s))
        threes.append(one_call(3, 100 + s))
    per_round = statistics.median(rounds)
    marginal = statistics.median((t3 - t1) / 2 for t1, t3 in zip(rounds, threes, strict=True))
    return {
        **spec,
        "rows": n,
        "features": data.n_features,
        "sample_rate": hyper.sample_rate,
        "torch_threads": torch.get_num_threads(),
        "round_seconds_1_epoch": rounds,
        "three_epoch_seconds": threes,
        "median_round_seconds": per_round,
        "min_round_seconds": min(rounds),
        "marginal_epoch_seconds": max(marginal, 0.0),
        "rows_per_second": n / per_round,
        "peak_rss_mib_after_load": round(rss_loaded, 1),
        "peak_rss_mib_after_training": round(maxrss_mib(), 1),
    }


def run_config(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration in a fresh interpreter so ru_maxrss is that configuration's own."""
    res = subprocess.run(
        [sys.executable, "-m", "bench.dp_cost", "--worker", json.dumps(spec)],
        cwd=REPO,
        env=bench_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def slowdowns(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pair private with non-private runs of the same data, model and batch."""
    out = []
    for r in results:
        if not r["private"]:
            continue
        base = next(
            b
            for b in results
            if not b["private"]
            and (b["dataset"], b["model"], b["batch"]) == (r["dataset"], r["model"], r["batch"])
        )
        out.append(
            {
                "dataset": r["dataset"],
                "model": r["model"],
                "batch": r["batch"],
                "rows": r["rows"],
                "nonprivate_round_s": base["median_round_seconds"],
                "private_round_s": r["median_round_seconds"],
                "round_slowdown": r["median_round_seconds"] / base["median_round_seconds"],
                "epoch_slowdown": r["marginal_epoch_seconds"]
                / max(base["marginal_epoch_seconds"], 1e-9),
                "nonprivate_epoch_s": base["marginal_epoch_seconds"],
                "private_epoch_s": r["marginal_epoch_seconds"],
                "nonprivate_peak_mib": base["peak_rss_mib_after_training"],
                "private_peak_mib": r["peak_rss_mib_after_training"],
                "nonprivate_train_mib": base["peak_rss_mib_after_training"]
                - base["peak_rss_mib_after_load"],
                "private_train_mib": r["peak_rss_mib_after_training"]
                - r["peak_rss_mib_after_load"],
            }
        )
    return out


def markdown(meta: dict[str, Any], pairs: list[dict[str, Any]]) -> str:
    rows = [
        [
            p["dataset"],
            p["rows"],
            p["model"],
            p["batch"],
            f"{p['nonprivate_round_s']:.3f}",
            f"{p['private_round_s']:.3f}",
            f"{p['round_slowdown']:.1f}×",
            f"{p['nonprivate_epoch_s']:.3f}",
            f"{p['private_epoch_s']:.3f}",
            f"{p['epoch_slowdown']:.1f}×",
            f"{p['nonprivate_peak_mib']:.0f} (+{p['nonprivate_train_mib']:.0f})",
            f"{p['private_peak_mib']:.0f} (+{p['private_train_mib']:.0f})",
        ]
        for p in pairs
    ]
    return "\n".join(
        [
            "# Cost of DP-SGD: private vs non-private training, same model, data and batch",
            "",
            "Private = the node's `client.training.train_dp` as the node runtime calls it "
            "(Opacus per-sample gradients, clipping at "
            f"{describe_clip(RunConfig.default('max-grad-norm'))}, "
            "Poisson sampling, noise multiplier "
            f"{RunConfig.default('noise-multiplier')}); non-private = `bench.plain` training "
            "with the same model, rows and (expected) batch size. 'Round' = one call training "
            "one epoch, set-up included (what a node does per federated round); 'epoch' = marginal "
            "cost of one more epoch, (3-epoch call − 1-epoch call) / 2; both medians over "
            "interleaved repeats after 3 warm-up calls, torch limited to 1 thread so that other "
            "load on this shared 2-core machine disturbs the comparison less. Peak memory = "
            "ru_maxrss of a fresh process per configuration after "
            "training (in brackets: growth during training over the peak after loading data). "
            "Not included: noise calibration (`noise_multiplier(cfg)` for a target ε), which "
            "takes ~1–7 s per call and depends on the configuration only.",
            "",
            md_table(
                [
                    "data",
                    "rows",
                    "model",
                    "batch",
                    "round s (plain)",
                    "round s (DP)",
                    "round slowdown",
                    "epoch s (plain)",
                    "epoch s (DP)",
                    "epoch slowdown",
                    "peak MiB (plain)",
                    "peak MiB (DP)",
                ],
                rows,
            ),
            "",
            "![round time](dp_cost.png)",
            "",
            meta_markdown(meta),
        ]
    )


def plot(pairs: list[dict[str, Any]], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{p['dataset']}\n{p['model']} b{p['batch']}" for p in pairs]
    xs = range(len(pairs))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(pairs)), 4))
    ax.bar(
        [x - 0.2 for x in xs], [p["nonprivate_round_s"] for p in pairs], 0.4, label="non-private"
    )
    ax.bar([x + 0.2 for x in xs], [p["private_round_s"] for p in pairs], 0.4, label="DP-SGD")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("seconds per 1-epoch round")
    ax.set_yscale("log")
    ax.set_title("DP-SGD vs non-private training, same model, data and batch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["telco", "bank"])
    p.add_argument("--models", nargs="+", default=["logreg", "mlp"])
    p.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.quick:
        args.datasets, args.models, args.batches, args.repeats = ["telco"], ["logreg"], [64], 1
    load = wait_for_quiet()
    t0 = time.monotonic()
    meta = run_metadata(seeds=list(range(args.repeats)), load_average_after_wait=load)
    results = []
    i = 0
    for dataset in args.datasets:
        for model in args.models:
            for batch in args.batches:
                for private in (False, True):
                    spec = {
                        "id": i,
                        "dataset": dataset,
                        "model": model,
                        "batch": batch,
                        "private": private,
                        "repeats": args.repeats,
                    }
                    results.append(run_config(spec))
                    i += 1
    pairs = slowdowns(results)
    finish_metadata(meta, t0)
    from bench.common import RESULTS

    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(pairs, RESULTS / "dp_cost.png")
    write_results("dp_cost", {"meta": meta, "pairs": pairs, "runs": results}, markdown(meta, pairs))


if __name__ == "__main__":
    main()
