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
from dataclasses import asdict, dataclass, replace
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
from bench.dp import LocalHyper, NodeAccount, make_config
from bench.plain import predict_proba, train_plain
from client.training import DPTrainConfig
from common.metrics import binary_metrics
from common.model import build_model
from common.run_config import MODEL_KINDS, RunConfig

METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "lift_top_decile")
NON_DP = "none"  # privacy level of runs without DP


@dataclass(frozen=True)
class Hyper:
    """The run configuration shared by every torch method (the app's defaults, RunConfig)."""

    model: str = RunConfig.default("model")
    rounds: int = RunConfig.default("num-server-rounds")
    local: LocalHyper = LocalHyper()

    def train_config(self, epsilon: float | None) -> DPTrainConfig:
        """What a node trains with in every round of the run (the same in each round)."""
        return make_config(self.local, target_epsilon=epsilon or 0.0, total_rounds=self.rounds)


def round_seed(seed: int, rnd: int) -> int:
    """The benchmark's per-round seed (non-DP shuffling; DP generators add the node)."""
    return seed * 1000 + rnd


def dp_seed(seed: int, rnd: int, node: int) -> int:
    """A node's DP generator seed in round `rnd`: distinct per node, or the nodes' noise would be
    identical (the runtime draws it from the OS; the benchmark seeds it to be replayable)."""
    return round_seed(seed, rnd) * 1000 + node


# ---- training ---------------------------------------------------------------------------------


def local_round(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: DPTrainConfig,
    account: NodeAccount,
    private: bool,
    seed: int,
    generator_seed: int,
) -> float:
    """One node's round in place: DP-SGD (the node's code) or non-DP training; returns ε so far."""
    if not private:
        train_plain(model, x, y, cfg, seed)
        return 0.0
    return account.train_round(model, x, y, cfg, seed=generator_seed)


def init_model(hyper: Hyper, n_features: int, seed: int) -> nn.Module:
    """The initial global model, as the ServerApp builds it."""
    torch.manual_seed(seed)
    return build_model(hyper.model, n_features)


def fedavg(
    data: SiloData, hyper: Hyper, epsilon: float | None, seed: int
) -> tuple[nn.Module, dict[str, float]]:
    """In-process FedAvg over every silo; returns the global model and ε per node."""
    global_model = init_model(hyper, data.n_features, seed)
    accounts = {s.name: NodeAccount() for s in data.silos}
    spent: dict[str, float] = {}
    cfg = hyper.train_config(epsilon)
    for rnd in range(1, hyper.rounds + 1):
        start = {k: v.detach().clone() for k, v in global_model.state_dict().items()}
        agg: dict[str, np.ndarray] = {}
        for i, silo in enumerate(data.silos):
            local = build_model(hyper.model, data.n_features)
            local.load_state_dict(start)
            spent[silo.name] = local_round(
                local,
                silo.x_train,
                silo.y_train,
                cfg,
                accounts[silo.name],
                epsilon is not None,
                round_seed(seed, rnd),
                dp_seed(seed, rnd, i),
            )
            # Flower FedAvg weights by num-examples, which every node sends as 1.0
            weight = 1.0 / len(data.silos)
            for k, v in local.state_dict().items():
                arr = v.detach().numpy() * weight
                agg[k] = arr if k not in agg else agg[k] + arr
        global_model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in agg.items()})
    return global_model, spent


def local_only(
    data: SiloData, index: int, hyper: Hyper, epsilon: float | None, seed: int
) -> tuple[nn.Module, float]:
    """Silo `index` alone for the same rounds × epochs (and the same per-node DP budget)."""
    silo = data.silos[index]
    model = init_model(hyper, data.n_features, seed)
    account = NodeAccount()
    eps = 0.0
    cfg = hyper.train_config(epsilon)
    for rnd in range(1, hyper.rounds + 1):
        eps = local_round(
            model,
            silo.x_train,
            silo.y_train,
            cfg,
            account,
            epsilon is not None,
            round_seed(seed, rnd),
            dp_seed(seed, rnd, index),
        )
    return model, eps


def centralized_torch(data: SiloData, hyper: Hyper, seed: int) -> nn.Module:
    """Our model on pooled training rows, non-private training for rounds × local epochs."""
    x, y = data.pooled_train()
    model = init_model(hyper, data.n_features, seed)
    cfg = replace(hyper.train_config(None), epochs=hyper.rounds * hyper.local.epochs)
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
    data: SiloData, hyper: Hyper, seeds: list[int], epsilons: list[float]
) -> list[dict[str, Any]]:
    """Centralized, federated and local-only runs of our model at every privacy level."""
    runs = []
    levels: list[float | None] = [None, *epsilons]
    for seed in seeds:
        t0 = time.monotonic()
        model = centralized_torch(data, hyper, seed)
        runs.append(
            _record(
                "central-torch", NON_DP, seed, t0, evaluate_everywhere(torch_predictor(model), data)
            )
        )
        for eps in levels:
            privacy = NON_DP if eps is None else _fmt_eps(eps)
            t0 = time.monotonic()
            model, spent = fedavg(data, hyper, eps, seed)
            runs.append(
                _record(
                    "federated",
                    privacy,
                    seed,
                    t0,
                    evaluate_everywhere(torch_predictor(model), data),
                    epsilon_spent=spent,
                )
            )
            for i, silo in enumerate(data.silos):
                t0 = time.monotonic()
                model, spent_i = local_only(data, i, hyper, eps, seed)
                scores = evaluate_everywhere(torch_predictor(model), data)
                runs.append(
                    _record(
                        "local-only",
                        privacy,
                        seed,
                        t0,
                        {"global": scores["global"], "own": scores["nodes"][silo.name]},
                        node=silo.name,
                        epsilon_spent={silo.name: spent_i},
                    )
                )
            logging.info("%s seed=%s privacy=%s done", data.spec.name, seed, privacy)
    return runs


# ---- the deployed check -----------------------------------------------------------------------


def deployed_run_config(data: SiloData, hyper: Hyper, epsilon: float, seed: int) -> dict[str, Any]:
    """The run config equivalent to `fedavg(data, hyper, epsilon, seed)` (validated by RunConfig).

    Every training setting is given explicitly (the bench's values, RunConfig defaults unless a
    flag changed them), so the deployed nodes train exactly what the in-process runs train.
    """
    h = hyper.local
    config: dict[str, Any] = {
        "num-server-rounds": hyper.rounds,
        "strategy": "fedavg",
        "model": hyper.model,
        "local-epochs": h.epochs,
        "sample-rate": h.sample_rate,
        "optimizer": h.optimizer,
        "learning-rate": h.learning_rate,
        "max-grad-norm": h.max_grad_norm,
        "target-epsilon": epsilon,
        "delta": h.delta,
        "eval-noise": h.eval_noise,
        "eval-bins": h.eval_bins,
        "proximal-mu": h.proximal_mu,
        "min-nodes": len(data.silos),
        "seed": seed,
        "contract-path": str(data.spec.contract),
        "model-name": f"bench-{data.spec.name}",
    }
    # RunConfig is what the ServerApp validates: a key it does not know would be ignored silently.
    unknown = set(config) - set(RunConfig.defaults())
    if unknown:
        raise ValueError(f"not run-config keys: {', '.join(sorted(unknown))}")
    RunConfig.from_run_config(config)
    return config


def deployed_check(
    data: SiloData, hyper: Hyper, epsilon: float, seed: int, repeats: list[int]
) -> dict[str, Any]:
    """One run on the real deployment engine vs in-process runs of the same configuration.

    The deployed nodes also release noised evaluation histograms each round (the app's default
    `eval-noise`), which the in-process runs here plan for too, so both calibrate the same noise.
    """
    import shutil

    from atoll.federation import LocalFederation
    from common.model import load_model
    from server.registry import Registry

    eval_noise = float(RunConfig.default("eval-noise"))  # the app's default, as `make demo`
    hyper = replace(hyper, local=replace(hyper.local, eval_noise=eval_noise))
    workdir = WORK / f"quality-deployed-{data.spec.name}"
    shutil.rmtree(workdir, ignore_errors=True)
    run_config = deployed_run_config(data, hyper, epsilon, seed)
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
    deployed = load_model(stored.card.model_kind, stored.card.n_features, stored.weights)
    in_runs = []
    for rep in repeats:
        t1 = time.monotonic()
        model, spent = fedavg(data, hyper, epsilon, rep)
        scores = evaluate_everywhere(torch_predictor(model), data)
        in_runs.append(
            _record("federated", _fmt_eps(epsilon), rep, t1, scores, epsilon_spent=spent)
        )
    in_summary = summarize(in_runs)[0]
    return {
        "dataset": data.spec.name,
        "epsilon": epsilon,
        "seed": seed,
        "rounds": hyper.rounds,
        "eval_noise": eval_noise,
        "run_config": run_config,
        "deployed_run_seconds": round(outcome.seconds, 1),
        "deployed_total_seconds_incl_startup": round(wall, 1),
        "deployed": evaluate_everywhere(torch_predictor(deployed), data),
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


def plot(results: dict[str, Any], path: Any) -> None:
    """AUC vs ε per data set, with the non-DP federated and centralized references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    names = list(results["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        summary = results["datasets"][name]["summary"]

        def pick(method: str, privacy: str, summary: list = summary) -> dict | None:
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
        fed = [_need(pick("federated", _fmt_eps(x)))["global"]["roc_auc"] for x in eps]
        ax.errorbar(
            eps,
            [f["mean"] for f in fed],
            yerr=[f["std"] for f in fed],
            marker="o",
            capsize=3,
            label="federated DP-SGD (global test)",
        )
        local = _local_weighted(summary, eps, results["datasets"][name]["silos"])
        ax.plot(
            eps,
            local,
            marker="s",
            linestyle="--",
            label="local-only DP-SGD (mean over silos, global test)",
        )
        refs = [
            ("federated", "federated, no DP", "C2"),
            ("central-torch", "centralized, our model", "C3"),
            ("central-sklearn-logreg", "centralized sklearn LR", "C4"),
            ("central-sklearn-hgb", "centralized sklearn HGB", "C5"),
        ]
        for method, label, color in refs:
            e = pick(method, NON_DP)
            if e is not None:
                ax.axhline(e["global"]["roc_auc"]["mean"], color=color, linestyle=":", label=label)
        ax.set_xscale("log")
        ax.set_xticks(eps, [_fmt_eps(x) for x in eps])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("ε per node (δ = 1e-5), whole run")
        ax.set_ylabel("ROC AUC, global test set")
        ax.set_title(f"{name}: privacy–utility")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _need(entry: dict | None) -> dict:
    if entry is None:
        raise ValueError("missing summary entry")
    return entry


def _fmt_eps(x: float) -> str:
    return f"{x:g}"


def _local_weighted(summary: list[dict], eps: list[float], silos: list[dict]) -> list[float]:
    """Local-only global-test AUC averaged over silos, weighted by training rows."""
    weights = {s["name"]: s["train_rows"] for s in silos}
    out = []
    for x in eps:
        es = [e for e in summary if e["method"] == "local-only" and e["privacy"] == _fmt_eps(x)]
        vals = [(e["global"]["roc_auc"]["mean"], weights[e["node"]]) for e in es]
        vals = [(v, w) for v, w in vals if math.isfinite(v)]
        out.append(sum(v * w for v, w in vals) / max(sum(w for _, w in vals), 1))
    return out


# ---- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epsilons", nargs="+", type=float, default=[0.5, 1.0, 3.0, 8.0])
    p.add_argument("--rounds", type=int, default=RunConfig.default("num-server-rounds"))
    p.add_argument("--model", default=RunConfig.default("model"), choices=list(MODEL_KINDS))
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("opacus").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="opacus")
    hyper = Hyper(model=args.model, rounds=args.rounds)
    if args.replot:
        from bench.common import RESULTS

        write_png(json.loads((RESULTS / f"{args.name}.json").read_text()), args.name)
        return
    if not args.deployed_only:
        run_grid(args, hyper)
    if not args.no_deployed:
        t_start = time.monotonic()
        meta = run_metadata(seeds=args.seeds)
        data = load_silos(args.deployed_dataset)
        check = deployed_check(data, hyper, args.deployed_epsilon, args.seeds[0], args.seeds)
        finish_metadata(meta, t_start)
        write_results(
            f"{args.name}_deployed", {"meta": meta, **check}, deployed_markdown(check, meta)
        )


def run_grid(args: argparse.Namespace, hyper: Hyper) -> None:
    """Every method at every privacy level on every data set; writes NAME.{json,md,png}."""
    t_start = time.monotonic()
    meta = run_metadata(seeds=args.seeds)
    results: dict[str, Any] = {
        "meta": meta,
        "config": {
            **asdict(hyper),
            "epsilons": args.epsilons,
            "test_fraction": 0.2,
            "split": "client.split.split_mask on ids (salt atoll-split-v1)",
        },
        "method_notes": {
            "federated": "FedAvg in process: the nodes' client.training.train_dp called as the "
            "node runtime calls it (DP) or bench.plain (no DP), averaged with equal weights as "
            "Flower FedAvg does with the nodes' num-examples = 1.0; same training code, no "
            "network",
            "local-only": "each silo alone, same rounds x epochs and per-node budget",
            "central-torch": "build_model on pooled training rows, bench.plain, rounds x epochs",
            "central-sklearn-logreg": "LogisticRegression(max_iter=5000) on the encoding",
            "central-sklearn-hgb": "HistGradientBoostingClassifier on the encoding",
        },
        "datasets": {},
    }
    md = [f"# Quality: centralized vs local-only vs federated (model `{hyper.model}`)", ""]
    for name in args.datasets:
        data = load_silos(name)
        t0 = time.monotonic()
        runs = sklearn_runs(data, args.seeds) + torch_runs(data, hyper, args.seeds, args.epsilons)
        summary = summarize(runs)
        results["datasets"][name] = {
            "file": str(data.spec.csv),
            "partition_by": data.spec.partition_by,
            "silos": [
                {
                    "name": s.name,
                    "values": s.values,
                    "train_rows": len(s.x_train),
                    "test_rows": len(s.x_test),
                    "train_positive_rate": float(s.y_train.mean()),
                }
                for s in data.silos
            ],
            "seconds": round(time.monotonic() - t0, 1),
            "summary": summary,
            "runs": runs,
        }
        md += [dataset_markdown(name, data, summary), ""]
    finish_metadata(meta, t_start)
    png = write_png(results, args.name)
    md[1:1] = [
        "Same test rows for every method (hash of the customer id, 20 %). The federated rows are "
        "FedAvg run *in process* with the nodes' own `train_dp` (Opacus DP-SGD, noise calibrated "
        "per node so the whole run spends at most ε at δ = 1e-5, floored at the owner's minimum "
        "noise, update scaled by the node's public size bucket) and Flower FedAvg's average with "
        "equal weights (nodes send num-examples = 1.0): the same training code without the "
        f"network (the deployed check, `{args.name}_deployed.md`, runs one configuration on the "
        "real deployment engine). DP generators are seeded per seed, round and node, so a run "
        f"is a replay. Hyperparameters: {hyper.rounds} rounds, {hyper.local.describe()}; "
        "non-DP runs train without clipping or noise (same update rule and values) on batches of "
        "the DP run's expected size.",
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
