"""Quality: centralized vs local-only vs federated (with and without DP) on the real data sets.

    .venv/bin/python -m bench.quality            # ~11 min on 2 cores (incl. one deployed run)
    .venv/bin/python -m bench.quality --quick    # smoke size (1 seed, 2 rounds, no deployed run)

Telco churn split by `Contract` into 3 silos and bank marketing (without `duration`) split by
`job` into 5 silos, each silo loaded through the node's own pipeline (see bench/datasets.py); the
test rows (hash of the id, 20 %) are the same for every method. Methods:

- centralized references on pooled training rows: scikit-learn LogisticRegression and
  HistGradientBoosting on the contract's encoding, and our own model (`build_model`) trained with
  non-private training (`bench.plain`);
- local-only: each silo trains alone (same rounds × epochs, with and without DP), evaluated on
  its own test rows and on the global test set;
- federated: FedAvg *in process* — the nodes' own `client.training.train_dp` called as the node
  runtime calls it (Opacus DP-SGD, noise calibrated per node so the whole run spends at most ε at
  δ, floored at the owner's minimum; the update scaled by the node's public size bucket) or the
  same update rule without clipping or noise, and Flower's FedAvg average with the weights the
  nodes send (`num-examples` = 1.0: equal weights, no exact count leaves a node). It is the same
  training code without the network. One configuration also runs on the real deployment engine
  (`atoll.federation.LocalFederation`: TLS SuperLink, authenticated SuperNodes, node runtimes)
  with the same seeds, and the published model is compared with the in-process one.

Metrics: ROC AUC, PR AUC, log loss, Brier, lift in the top decile (`common.metrics`), per node and
global, mean ± std over seeds. Writes bench/results/quality.{json,md}, quality_privacy_utility.png
and quality_deployed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import warnings
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from torch import nn

from bench.common import (
    WORK,
    finish_metadata,
    fmt_ms,
    md_table,
    mean_std,
    meta_markdown,
    run_metadata,
    write_results,
)
from bench.datasets import DATASETS, SiloData, load_silos
from bench.plain import predict_proba, train_plain
from bench.quality_run import Setting, product_run
from client.schedule import for_round
from client.training import DPTrainConfig
from common.encoding import Encoder
from common.metrics import binary_metrics
from common.model import BUILD_KINDS, BasisLayout, basis_layout, build_model
from common.run_config import RunConfig

METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "lift_top_decile")
NON_DP = "none"  # privacy level of runs without DP


REPORTED = ("roc_auc", "log_loss")  # what the card reports, with its interval, per DP run


def plain_config(s: Setting) -> DPTrainConfig:
    """The settings non-DP training reads (update rule, learning rate, epochs, batch size)."""
    return replace(s.train_config(), target_epsilon=0.0)


def round_seed(seed: int, rnd: int) -> int:
    """The benchmark's per-round seed (non-DP shuffling; DP generators add the node)."""
    return seed * 1000 + rnd


# ---- training ---------------------------------------------------------------------------------


def layout_of(data: SiloData) -> BasisLayout:
    """The contract's basis for the additive model (ignored by the other kinds)."""
    return basis_layout(Encoder(data.contract))


def new_model(s: Setting, data: SiloData) -> nn.Module:
    return build_model(s.model, data.n_features, layout=layout_of(data))


def init_model(s: Setting, data: SiloData, seed: int) -> nn.Module:
    """The initial global model, as the ServerApp builds it."""
    torch.manual_seed(seed)
    return new_model(s, data)


def fedavg_plain(data: SiloData, s: Setting, seed: int) -> nn.Module:
    """Non-DP federated reference: every node trains without clipping or noise (`bench.plain`)
    from the global model each round; the average has equal weights (nodes send num-examples
    = 1.0), as Flower's FedAvg computes it."""
    global_model = init_model(s, data, seed)
    for rnd in range(1, s.rounds + 1):
        start = {k: v.detach().clone() for k, v in global_model.state_dict().items()}
        agg: dict[str, np.ndarray] = {}
        for silo in data.silos:
            local = new_model(s, data)
            local.load_state_dict(start)
            cfg = for_round(plain_config(s), rnd)  # the run's per-round learning rate
            train_plain(local, silo.x_train, silo.y_train, cfg, round_seed(seed, rnd))
            for k, v in local.state_dict().items():
                arr = v.detach().numpy() / len(data.silos)
                agg[k] = arr if k not in agg else agg[k] + arr
        global_model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in agg.items()})
    return global_model


def local_plain(data: SiloData, index: int, s: Setting, seed: int) -> nn.Module:
    """Silo `index` alone, non-DP, for the same rounds × epochs."""
    model = init_model(s, data, seed)
    silo = data.silos[index]
    for rnd in range(1, s.rounds + 1):
        cfg = for_round(plain_config(s), rnd)
        train_plain(model, silo.x_train, silo.y_train, cfg, round_seed(seed, rnd))
    return model


def centralized_torch(data: SiloData, s: Setting, seed: int) -> nn.Module:
    """Our model on pooled training rows, non-private training for rounds × local epochs."""
    x, y = data.pooled_train()
    model = init_model(s, data, seed)
    cfg = replace(plain_config(s), epochs=s.rounds * s.epochs)
    train_plain(model, x, y, cfg, round_seed(seed, 1))
    return model


# ---- evaluation -------------------------------------------------------------------------------


def metrics_of(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    m = binary_metrics(y, p)
    return {k: m[k] for k in (*METRICS, "n", "positive_rate")}


def evaluate_everywhere(predict: Any, data: SiloData) -> dict[str, Any]:
    """Metrics on the global test set and on each silo's own test rows."""
    xg, yg = data.global_test()
    return {
        "global": metrics_of(yg, predict(xg)),
        "nodes": {s.name: metrics_of(s.y_test, predict(s.x_test)) for s in data.silos},
    }


def torch_predictor(model: nn.Module) -> Any:
    return lambda x: predict_proba(model, x)


def sklearn_runs(data: SiloData, seeds: list[int]) -> list[dict[str, Any]]:
    """LogisticRegression (deterministic: one run) and HistGradientBoosting per seed."""
    x, y = data.pooled_train()
    runs = []
    t0 = time.monotonic()
    lr = LogisticRegression(max_iter=5000).fit(x, y)
    runs.append(_record("central-sklearn-logreg", NON_DP, 0, t0, lr_eval(lr, data), notes="pooled"))
    for seed in seeds:
        t0 = time.monotonic()
        hgb = HistGradientBoostingClassifier(random_state=seed).fit(x, y)
        runs.append(_record("central-sklearn-hgb", NON_DP, seed, t0, lr_eval(hgb, data)))
    return runs


def lr_eval(estimator: Any, data: SiloData) -> dict[str, Any]:
    return evaluate_everywhere(lambda x: estimator.predict_proba(x)[:, 1], data)


def _record(
    method: str,
    privacy: float | str,
    seed: int,
    t0: float,
    scores: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "method": method,
        "privacy": privacy,
        "seed": seed,
        "seconds": round(time.monotonic() - t0, 2),
        **scores,
        **extra,
    }


def torch_runs(
    data: SiloData,
    s: Setting,
    seeds: list[int],
    epsilons: list[float],
    local_epsilons: list[float] | None = None,
) -> list[dict[str, Any]]:
    """Centralized, federated and local-only runs of our model at every privacy level.

    DP runs are the product's (`bench.quality_run.product_run`): DP-SGD, the nodes' final noised
    evaluation, Platt calibration on it, and the card's reported metrics next to the truth.
    """
    runs = []
    xg, yg = data.global_test()
    for seed in seeds:
        t0 = time.monotonic()
        model = centralized_torch(data, s, seed)
        scores = evaluate_everywhere(torch_predictor(model), data)
        runs.append(_record("central-torch", NON_DP, seed, t0, scores))
        t0 = time.monotonic()
        model = fedavg_plain(data, s, seed)
        scores = evaluate_everywhere(torch_predictor(model), data)
        runs.append(_record("federated", NON_DP, seed, t0, scores))
        for i, silo in enumerate(data.silos):
            t0 = time.monotonic()
            scores = evaluate_everywhere(torch_predictor(local_plain(data, i, s, seed)), data)
            own = scores["nodes"][silo.name]
            runs.append(
                _record("local-only", NON_DP, seed, t0, {"global": scores["global"], "own": own},
                        node=silo.name)
            )  # fmt: skip
        for eps in epsilons:
            privacy = _fmt_eps(eps)
            se = replace(s, epsilon=eps)
            t0 = time.monotonic()
            run = product_run(data.silos, xg, yg, se, seed, layout_of(data))
            runs.append(
                _record(
                    "federated",
                    privacy,
                    seed,
                    t0,
                    evaluate_everywhere(torch_predictor(run["model"]), data),
                    epsilon_spent={x.name: run["epsilon"] for x in data.silos},
                    sigma=run["sigma"],
                    reported=run["reported"],
                    raw=run["raw"],
                    calibration=run["calibration"],
                )
            )
            for silo in data.silos if local_epsilons is None or eps in local_epsilons else []:
                t0 = time.monotonic()
                alone = product_run([silo], silo.x_test, silo.y_test, se, seed, layout_of(data))
                scores = evaluate_everywhere(torch_predictor(alone["model"]), data)
                runs.append(
                    _record(
                        "local-only",
                        privacy,
                        seed,
                        t0,
                        {"global": scores["global"], "own": scores["nodes"][silo.name]},
                        node=silo.name,
                        epsilon_spent={silo.name: alone["epsilon"]},
                        reported_own=alone["reported"],
                    )
                )
            logging.info("%s seed=%s ε=%s done", data.spec.name, seed, privacy)
    return runs


# ---- the deployed check -----------------------------------------------------------------------


def deployed_run_config(data: SiloData, s: Setting, epsilon: float, seed: int) -> dict[str, Any]:
    """The run config equivalent to `product_run(..., s at epsilon, seed)`, validated by RunConfig.

    Every training setting is given explicitly (the bench's values, RunConfig defaults unless a
    flag changed them), so the deployed nodes train exactly what the in-process runs train. The
    contract travels as its path (`atoll.runs` stages it and sends its hash).
    """
    from atoll.runs import CONTRACT_PATH_KEY
    from common.contract import load_contract

    config: dict[str, Any] = {
        "num-server-rounds": s.rounds,
        "strategy": s.strategy,
        "server-learning-rate": s.server_learning_rate,
        "server-momentum": s.server_momentum,
        "model": s.model,
        "local-epochs": s.epochs,
        "sample-rate": s.sample_rate,
        "optimizer": s.optimizer,
        "learning-rate": s.learning_rate,
        "learning-rate-final": s.learning_rate_final,
        "max-grad-norm": s.max_grad_norm,
        "target-epsilon": epsilon,
        "delta": s.delta,
        "eval-noise": s.eval_noise,
        "final-eval-noise": s.final_eval_noise,
        "eval-bins": s.eval_bins,
        "proximal-mu": s.proximal_mu,
        "calibrate": s.calibrate,
        "min-nodes": len(data.silos),
        "seed": seed,
        "model-name": f"bench-{data.spec.name}",
    }
    # RunConfig is what the ServerApp validates: a key it does not know would be ignored silently.
    unknown = set(config) - set(RunConfig.defaults())
    if unknown:
        raise ValueError(f"not run-config keys: {', '.join(sorted(unknown))}")
    RunConfig.from_run_config({**config, "contract-hash": load_contract(data.spec.contract).hash})
    return {**config, CONTRACT_PATH_KEY: str(data.spec.contract)}


def deployed_check(
    data: SiloData, s: Setting, epsilon: float, seed: int, repeats: list[int]
) -> dict[str, Any]:
    """One run on the real deployment engine vs in-process runs of the same configuration.

    Both publish the Platt-calibrated model from the nodes' final noised evaluation and plan the
    same releases (per-round and final evaluations), so both calibrate the same training noise.
    """
    import shutil

    from atoll.federation import LocalFederation
    from common.model import load_model
    from server.registry import Registry

    workdir = WORK / f"quality-deployed-{data.spec.name}"
    shutil.rmtree(workdir, ignore_errors=True)
    run_config = deployed_run_config(data, s, epsilon, seed)
    t0 = time.monotonic()
    with LocalFederation(workdir) as fed:
        fed.start_coordinator()
        for silo in data.silos:
            fed.add_node(silo.name, silo.csv, data.spec.contract)
        outcome = fed.run(run_config, timeout=1200)
    wall = time.monotonic() - t0
    if outcome.exit_code != 0 or outcome.model_name is None or outcome.model_version is None:
        raise RuntimeError(f"deployed run failed (exit {outcome.exit_code}); logs in {fed.logs}")
    with Registry(fed.registry_url) as reg:
        stored = reg.get(outcome.model_name, outcome.model_version)
    deployed = load_model(
        stored.card.model_kind, stored.card.n_features, stored.weights, layout=layout_of(data)
    )
    xg, yg = data.global_test()
    in_runs = []
    for rep in repeats:
        t1 = time.monotonic()
        run = product_run(data.silos, xg, yg, replace(s, epsilon=epsilon), rep, layout_of(data))
        scores = evaluate_everywhere(torch_predictor(run["model"]), data)
        spent = {x.name: run["epsilon"] for x in data.silos}
        in_runs.append(
            _record("federated", _fmt_eps(epsilon), rep, t1, scores, epsilon_spent=spent,
                    reported=run["reported"])
        )  # fmt: skip
    in_summary = summarize(in_runs)[0]
    final = stored.card.metrics.get("final", {})
    return {
        "dataset": data.spec.name,
        "epsilon": epsilon,
        "seed": seed,
        "rounds": s.rounds,
        "eval_noise": s.eval_noise,
        "final_eval_noise": s.final_eval_noise,
        "run_config": run_config,
        "deployed_run_seconds": round(outcome.seconds, 1),
        "deployed_total_seconds_incl_startup": round(wall, 1),
        "deployed": evaluate_everywhere(torch_predictor(deployed), data),
        "deployed_reported": {k: final.get("estimates", {}).get(k) for k in REPORTED},
        "epsilon_per_node_deployed": dict(stored.card.privacy.epsilon_per_node),
        "in_process_repeats": repeats,
        "in_process": in_summary,
        "in_process_runs": in_runs,
        "logs": str(fed.logs),
    }


# ---- summaries --------------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (method, privacy[, node]) of global / per-node metrics."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        key = (r["method"], str(r["privacy"]), r.get("node", ""))
        groups.setdefault(key, []).append(r)
    out = []
    for (method, privacy, node), rs in groups.items():
        entry: dict[str, Any] = {"method": method, "privacy": privacy, "runs": len(rs)}
        if node:
            entry["node"] = node
        entry["global"] = {m: mean_std(r["global"][m] for r in rs) for m in METRICS}
        if "own" in rs[0]:
            entry["own"] = {m: mean_std(r["own"][m] for r in rs) for m in METRICS}
        if "nodes" in rs[0]:
            entry["nodes"] = {
                n: {m: mean_std(r["nodes"][n][m] for r in rs) for m in METRICS}
                for n in rs[0]["nodes"]
            }
        if "reported" in rs[0] and rs[0]["reported"]:
            for m in REPORTED:
                got = [r["reported"][m] for r in rs]
                entry["global"][f"reported_{m}"] = mean_std(g["estimate"] for g in got)
                entry["global"][f"reported_{m}_covered"] = sum(g["covered"] for g in got) / len(rs)
                entry["global"][f"reported_{m}_max_abs_error"] = max(abs(g["error"]) for g in got)
                entry["global"][f"reported_{m}_ci95_width"] = mean_std(
                    g["ci95"][1] - g["ci95"][0] for g in got
                )
        if "epsilon_spent" in rs[0]:
            entry["epsilon_spent"] = {
                n: max(r["epsilon_spent"][n] for r in rs) for n in rs[0]["epsilon_spent"]
            }
        out.append(entry)
    return out


def _privacy_order(p: str) -> float:
    return -math.inf if p == NON_DP else -float(p)


def dataset_markdown(name: str, data: SiloData, summary: list[dict[str, Any]]) -> str:
    """Tables of one data set: global metrics per method, then AUC per node."""
    silos = data.silos
    lines = [f"### {name}: {data.spec.csv.name}, {len(silos)} silos by `{data.spec.partition_by}`"]
    lines.append("")
    lines.append(
        md_table(
            ["silo", "values", "train rows", "test rows", "positive rate (train)"],
            [
                [
                    s.name,
                    ", ".join(s.values),
                    len(s.x_train),
                    len(s.x_test),
                    f"{s.y_train.mean():.3f}",
                ]
                for s in silos
            ],
        )
    )
    lines += ["", "Global test set (all silos' test rows), mean ± std over seeds:", ""]
    rows = []
    order = ["central-sklearn-logreg", "central-sklearn-hgb", "central-torch", "federated"]
    for method in order:
        for e in sorted(
            (e for e in summary if e["method"] == method),
            key=lambda e: _privacy_order(e["privacy"]),
        ):
            label = method if e["privacy"] == NON_DP else f"{method} DP ε={e['privacy']}"
            rows.append([label, *(fmt_ms(e["global"][m]) for m in METRICS)])
    for e in sorted(
        (e for e in summary if e["method"] == "local-only"),
        key=lambda e: (_privacy_order(e["privacy"]), e["node"]),
    ):
        dp = "" if e["privacy"] == NON_DP else f" DP ε={e['privacy']}"
        rows.append([f"local-only {e['node']}{dp}", *(fmt_ms(e["global"][m]) for m in METRICS)])
    lines.append(md_table(["method", *METRICS], rows))
    lines += ["", *reported_markdown(summary)]
    lines += ["", "ROC AUC on each silo's own test rows (local-only: the silo's own model):", ""]
    rows = []
    for method in order:
        for e in sorted(
            (e for e in summary if e["method"] == method),
            key=lambda e: _privacy_order(e["privacy"]),
        ):
            label = method if e["privacy"] == NON_DP else f"{method} DP ε={e['privacy']}"
            rows.append([label, *(fmt_ms(e["nodes"][s.name]["roc_auc"]) for s in silos)])
    privacies = sorted(
        {e["privacy"] for e in summary if e["method"] == "local-only"}, key=_privacy_order
    )
    for p in privacies:
        own = {
            e["node"]: e["own"]["roc_auc"]
            for e in summary
            if e["method"] == "local-only" and e["privacy"] == p
        }
        label = "local-only" if p == NON_DP else f"local-only DP ε={p}"
        rows.append([label, *(fmt_ms(own[s.name]) for s in silos)])
    lines.append(md_table(["method", *(s.name for s in silos)], rows))
    return "\n".join(lines)


def reported_markdown(summary: list[dict[str, Any]]) -> list[str]:
    """What the model card reported for each federated DP run vs the published model's truth."""
    rows = []
    for e in sorted(
        (e for e in summary if e["method"] == "federated" and "reported_roc_auc" in e["global"]),
        key=lambda e: _privacy_order(e["privacy"]),
    ):
        g = e["global"]
        rows.append(
            [
                e["privacy"],
                fmt_ms(g["roc_auc"]),
                fmt_ms(g["reported_roc_auc"]),
                f"{g['reported_roc_auc_max_abs_error']:.3f}",
                f"{g['reported_roc_auc_ci95_width']['mean']:.3f}",
                f"{g['reported_roc_auc_covered']:.2f}",
                fmt_ms(g["log_loss"]),
                fmt_ms(g["reported_log_loss"]),
                f"{g['reported_log_loss_covered']:.2f}",
            ]
        )
    if not rows:
        return []
    head = ["ε", "AUC (true)", "AUC reported", "max abs error", "CI width", "AUC covered",
            "log loss (true)", "log loss reported", "LL covered"]  # fmt: skip
    return [
        "What the model card reports (federated DP, from the nodes' final noised histograms) "
        "next to the published model's true held-out values; covered = share of seeds whose "
        "true value lay inside the reported 95 % interval:",
        "",
        md_table(head, rows),
    ]


def plot(results: dict[str, Any], path: Any) -> None:
    """Per data set: ROC AUC and log loss vs ε (log loss beside AUC), with the references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 4.5 * len(names)), squeeze=False)
    for row, name in zip(axes, names, strict=True):
        ds = results["datasets"][name]
        for ax, metric in zip(row, ("roc_auc", "log_loss"), strict=True):
            _plot_metric(ax, ds, metric)
            ax.set_title(f"{name}: {'ROC AUC' if metric == 'roc_auc' else 'log loss'} vs ε")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_metric(ax: Any, ds: dict[str, Any], metric: str) -> None:
    from matplotlib.ticker import NullFormatter

    summary = ds["summary"]

    def pick(method: str, privacy: str) -> dict | None:
        return next(
            (
                e
                for e in summary
                if e["method"] == method and e["privacy"] == privacy and "node" not in e
            ),
            None,
        )

    eps = sorted(
        float(e["privacy"])
        for e in summary
        if e["method"] == "federated" and e["privacy"] != NON_DP
    )
    fed = [_need(pick("federated", _fmt_eps(x)))["global"] for x in eps]
    ax.errorbar(
        eps,
        [f[metric]["mean"] for f in fed],
        yerr=[f[metric]["std"] for f in fed],
        marker="o",
        capsize=3,
        label="federated DP, published model (true, global test)",
    )
    if fed and f"reported_{metric}" in fed[0]:
        ax.errorbar(
            eps,
            [f[f"reported_{metric}"]["mean"] for f in fed],
            yerr=[f[f"reported_{metric}_ci95_width"]["mean"] / 2 for f in fed],
            marker="x",
            linestyle="none",
            capsize=3,
            color="C1",
            label="what the card reports (mean, ± half the mean 95% interval)",
        )
    local = _local_weighted(summary, eps, ds["silos"], metric)
    ax.plot(eps, local, marker="s", linestyle="--", color="C6",
            label="local-only DP (mean over silos, global test)")  # fmt: skip
    refs = [
        ("federated", "federated, no DP", "C2"),
        ("central-torch", "centralized, our model", "C3"),
        ("central-sklearn-logreg", "centralized sklearn LR", "C4"),
        ("central-sklearn-hgb", "centralized sklearn HGB", "C5"),
    ]
    for method, label, color in refs:
        e = pick(method, NON_DP)
        if e is not None:
            ax.axhline(e["global"][metric]["mean"], color=color, linestyle=":", label=label)
    if metric == "log_loss":
        rate = float(ds["runs"][0]["global"]["positive_rate"])  # of the global test rows
        ax.axhline(-(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)), color="k",
                   linestyle="-.", label="base rate (always predict the prior)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(eps, [_fmt_eps(x) for x in eps])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("ε per node (δ = 1e-5), whole run incl. evaluations")
    ax.set_ylabel(f"{'ROC AUC' if metric == 'roc_auc' else 'log loss'}, global test set")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.6)


def _need(entry: dict | None) -> dict:
    if entry is None:
        raise ValueError("missing summary entry")
    return entry


def _fmt_eps(x: float) -> str:
    return f"{x:g}"


def _local_weighted(
    summary: list[dict], eps: list[float], silos: list[dict], metric: str = "roc_auc"
) -> list[float]:
    """Local-only global-test `metric` averaged over silos, weighted by training rows."""
    weights = {s["name"]: s["train_rows"] for s in silos}
    out = []
    for x in eps:
        es = [e for e in summary if e["method"] == "local-only" and e["privacy"] == _fmt_eps(x)]
        vals = [(e["global"][metric]["mean"], weights[e["node"]]) for e in es]
        vals = [(v, w) for v, w in vals if math.isfinite(v)]
        # NaN (a gap in the plot) where no local-only run was made at this ε
        out.append(sum(v * w for v, w in vals) / sum(w for _, w in vals) if vals else math.nan)
    return out


# ---- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epsilons", nargs="+", type=float, default=[0.5, 1.0, 3.0, 8.0])
    p.add_argument(
        "--local-epsilons",
        nargs="*",
        type=float,
        default=None,
        help="ε levels of the local-only DP runs (default: every --epsilons level)",
    )
    p.add_argument("--rounds", type=int, default=RunConfig.default("num-server-rounds"))
    p.add_argument(
        "--model",
        default=RunConfig.default("model"),
        choices=list(BUILD_KINDS),
        help="model kind (a run, and so --deployed, accepts common.run_config's kinds only)",
    )
    p.add_argument("--deployed-epsilon", type=float, default=3.0)
    p.add_argument("--deployed-dataset", default="telco", choices=list(DATASETS))
    p.add_argument("--no-deployed", action="store_true", help="skip the deployment-engine run")
    p.add_argument("--deployed-only", action="store_true", help="only the deployment-engine run")
    p.add_argument("--quick", action="store_true", help="smoke size: 1 seed, 2 rounds, 2 ε")
    p.add_argument("--name", default="quality", help="result file stem in bench/results/")
    p.add_argument("--replot", action="store_true", help="redraw the PNG from NAME.json only")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.rounds, args.epsilons, args.no_deployed = [0], 2, [1.0, 8.0], True
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # 2 shared cores: one thread is several times faster here
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("opacus").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="opacus")
    setting = Setting(model=args.model, rounds=args.rounds)
    if args.replot:
        from bench.common import RESULTS

        write_png(json.loads((RESULTS / f"{args.name}.json").read_text()), args.name)
        return
    if not args.deployed_only:
        run_grid(args, setting)
    if not args.no_deployed:
        t_start = time.monotonic()
        meta = run_metadata(seeds=args.seeds)
        data = load_silos(args.deployed_dataset)
        check = deployed_check(data, setting, args.deployed_epsilon, args.seeds[0], args.seeds)
        finish_metadata(meta, t_start)
        write_results(
            f"{args.name}_deployed", {"meta": meta, **check}, deployed_markdown(check, meta)
        )


def run_grid(args: argparse.Namespace, s: Setting) -> None:
    """Every method at every privacy level on every data set; writes NAME.{json,md,png}."""
    t_start = time.monotonic()
    meta = run_metadata(seeds=args.seeds)
    results: dict[str, Any] = {
        "meta": meta,
        "config": {
            **asdict(s),
            "epsilons": args.epsilons,
            "local_epsilons": args.epsilons if args.local_epsilons is None else args.local_epsilons,
            "test_fraction": 0.2,
            "split": "client.split.split_mask on ids (salt atoll-split-v1)",
        },
        "method_notes": {
            "federated": "DP: the product's run in process (bench.quality_run.product_run): the "
            "nodes' client.training.train_dp as the node runtime calls it, the run's strategy "
            "(server.strategies) on Flower replies, the nodes' final noised evaluation, Platt "
            "calibration and the card's reported metrics (global.reported_*: estimate, "
            "coverage of the truth by its 95% interval). No DP: bench.plain on every node, "
            "equal-weight average; not calibrated",
            "local-only": "each silo alone, same rounds x epochs and per-node budget (DP: the "
            "same product run with one node, calibrated on its own final release)",
            "central-torch": "build_model on pooled training rows, bench.plain, rounds x epochs",
            "central-sklearn-logreg": "LogisticRegression(max_iter=5000) on the encoding",
            "central-sklearn-hgb": "HistGradientBoostingClassifier on the encoding",
        },
        "datasets": {},
    }
    md = [f"# Quality: centralized vs local-only vs federated (model `{s.model}`)", ""]
    for name in args.datasets:
        data = load_silos(name)
        t0 = time.monotonic()
        runs = sklearn_runs(data, args.seeds) + torch_runs(
            data, s, args.seeds, args.epsilons, args.local_epsilons
        )
        summary = summarize(runs)
        results["datasets"][name] = {
            "file": str(data.spec.csv),
            "partition_by": data.spec.partition_by,
            "silos": [
                {
                    "name": x.name,
                    "values": x.values,
                    "train_rows": len(x.x_train),
                    "test_rows": len(x.x_test),
                    "train_positive_rate": float(x.y_train.mean()),
                }
                for x in data.silos
            ],
            "seconds": round(time.monotonic() - t0, 1),
            "summary": summary,
            "runs": runs,
        }
        md += [dataset_markdown(name, data, summary), ""]
    finish_metadata(meta, t_start)
    png = write_png(results, args.name)
    md[1:1] = [
        "Same test rows for every method (hash of the customer id, 20 %). The federated DP rows "
        "are the product's run *in process* (`bench/quality_run.py`): the nodes' own `train_dp` "
        "(Opacus DP-SGD, noise calibrated per node so the whole run — training, per-round and "
        "final noised evaluations — spends at most ε at δ = 1e-5, floored at the owner's minimum "
        "noise, update scaled by the node's public size bucket), the run's Flower strategy on "
        "real replies (equal weights: nodes send num-examples = 1.0), then Platt calibration on "
        "the nodes' final noised histograms; their metrics are the published model's, and "
        "'reported' is what the model card says (estimate from the noised histograms, and the "
        "share of seeds whose true value lay inside its 95 % interval). The same code without "
        f"the network (`{args.name}_deployed.md` runs one configuration on the real deployment "
        "engine). DP generators and evaluation noise are seeded per seed, round and node, so a "
        f"run is a replay. Run settings (RunConfig defaults): {s.describe()}. Non-DP runs train "
        "without clipping or noise (same update rule and values) on batches of the DP run's "
        "expected size, and are not calibrated.",
        "",
        f"![privacy–utility]({png.name})",
        "",
        meta_markdown(meta),
        "",
    ]
    write_results(args.name, results, "\n".join(md))


def write_png(results: dict[str, Any], stem: str) -> Any:
    from bench.common import RESULTS

    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / f"{stem}_privacy_utility.png"
    plot(results, png)
    return png


def deployed_markdown(check: dict[str, Any], meta: dict[str, Any]) -> str:
    """The deployment-engine run next to the in-process runs of the same configuration."""
    inp = check["in_process"]
    rows = []
    for scope in ["global", *check["deployed"]["nodes"]]:
        dep = (
            check["deployed"]["global"] if scope == "global" else check["deployed"]["nodes"][scope]
        )
        ref = inp["global"] if scope == "global" else inp["nodes"][scope]
        eps_d = check["epsilon_per_node_deployed"].get(scope)
        eps_i = inp.get("epsilon_spent", {}).get(scope)
        rows.append(
            [
                scope,
                f"{dep['roc_auc']:.4f}",
                fmt_ms(ref["roc_auc"], 4),
                f"{dep['log_loss']:.4f}",
                fmt_ms(ref["log_loss"], 4),
                "" if eps_d is None else f"{eps_d:.3f}",
                "" if eps_i is None else f"{eps_i:.3f}",
            ]
        )
    n = len(check["in_process_repeats"])
    return "\n".join(
        [
            f"# Quality, deployed check: {check['dataset']}, ε = {check['epsilon']}, "
            f"{check['rounds']} rounds",
            "",
            "One federated run through the real deployment engine (`atoll.federation."
            "LocalFederation`: TLS SuperLink with node authentication, one SuperNode per silo, "
            "`flwr run`); the published model is read back from the registry and scored on the "
            f"same test rows as the in-process FedAvg runs of the same configuration ({n} "
            "repetitions, mean ± std). The node runtimes seed their DP noise from the OS (not "
            "from the run config), so the two cannot be bit-identical: the deployed run should "
            "fall within "
            "the in-process spread, and ε per node (a function of the configuration alone) should "
            f"match exactly. Evaluation noise per round: {check['eval_noise']} (the app's default, "
            "planned for in both). The deployed run took "
            f"{check['deployed_run_seconds']} s (`flwr run`), "
            f"{check['deployed_total_seconds_incl_startup']} s with process start-up.",
            "",
            md_table(
                [
                    "scope",
                    "AUC deployed",
                    "AUC in-process",
                    "log loss deployed",
                    "log loss in-process",
                    "ε deployed",
                    "ε in-process",
                ],
                rows,
            ),
            "",
            meta_markdown(meta),
        ]
    )


if __name__ == "__main__":
    main()
