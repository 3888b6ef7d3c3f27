"""Sweep of the run defaults: which training, calibration and estimation settings converge under DP.

    # the evidence for the defaults: old vs new and one-change alternatives, ε = 1 per node
    .venv/bin/python -m bench.quality_sweep --datasets telco bank --grid evidence --seeds 0 1 2
    # robustness: the defaults on contracts nobody tuned (drafted, data min/max) and synthetic
    # skewed data ("corner")
    .venv/bin/python -m bench.quality_sweep --datasets telco bank corner --variants "" draft \
        naive --grid old-vs-new --seeds 0 1 2
    # the additive model against logreg, on reference and untuned contracts and synthetic data
    .venv/bin/python -m bench.quality_sweep --datasets telco bank corner --variants "" draft \
        naive --grid additive --seeds 0 1 2
    # the learning-rate schedule (constant, cosine to 0.1 or 0.3 of lr) at ε 1, 3 and 1000
    .venv/bin/python -m bench.quality_sweep --datasets telco bank corner --grid lr-schedule \
        --seeds 0 1 2 --set epsilon=3
    # how the evaluation budget is split (same total ε): what the card reports
    .venv/bin/python -m bench.quality_sweep --grid final-eval --seeds 0 1 2
    # coverage of the reported intervals: 100 noise draws of each trained model's final release
    .venv/bin/python -m bench.quality_sweep --grid final-eval --seeds 1 --honesty 100

Results go to runs/bench/quality_sweep/ (git-ignored scratch; not part of bench/results).

Everything runs *in process* with the product's own code (`bench.quality_run.product_run`: the
nodes' DP-SGD, the run's Flower strategy on real replies, the nodes' final noised evaluation,
Platt calibration and the card's estimates).

For every run it records the TRUE held-out metrics of the published (calibrated) model on the
union of the silos' test rows, and what the model card would report (estimate and 95 % interval
from the noised histograms), so the bias and coverage of the reported numbers can be read off.

Data: ../shared/data (read only), loaded through the node's own pipeline by `bench.datasets`;
`corner` is a synthetic CSV like the issue's unseen data set (right-skewed amounts, contract
ranges = the data's own min/max, so the mass sits in a corner of [0, 1]). `--variants draft
naive` also runs each data set under contracts nobody tuned: one drafted from its columns
(`common.contract_draft`: log1p + centre/scale for skewed amounts) and one whose numeric ranges
are the data's own min/max. ε = 1 per node covers everything a node releases in the run (every
training round, the per-round evaluations and the final one).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.quality_run import (
    Setting,
    base_log_loss,
    federate,
    final_releases,
    product_run,
    true_metrics,
)
from client.training import final_noise
from common.encoding import Encoder
from common.model import BasisLayout, basis_layout, build_model

log = logging.getLogger("sweep")
OUT = Path("runs/bench/quality_sweep")


@dataclass
class Data:
    name: str
    silos: list[Any]
    n_features: int
    x_test: np.ndarray
    y_test: np.ndarray
    layout: BasisLayout  # the contract's basis for the additive model (others ignore it)
    notes: dict[str, Any] = field(default_factory=dict)


def load(name: str, variant: str | bool = "") -> Data:
    """Data set `name` under its reference contract, or a variant of it: "draft" (a contract
    drafted from the data, `common.contract_draft`) or "naive" (the reference contract with every
    numeric range set to the data's own min and max, as a new user would write it: amounts and
    counts then sit in a corner of [0, 1])."""
    from bench.datasets import load_silos

    if name == "corner":
        _corner_spec()
    variant = "draft" if variant is True else (variant or "")
    if variant == "draft":
        data = _load_drafted(name)
    elif variant == "naive":
        data = _load_naive(name)
    else:
        data = load_silos(name)
    xg, yg = data.global_test()
    return Data(
        name=name + (f"-{variant}" if variant else ""),
        silos=data.silos,
        n_features=data.n_features,
        x_test=xg,
        y_test=yg,
        layout=basis_layout(Encoder(data.contract)),
    )


def _load_drafted(name: str) -> Any:
    """The data set under a contract drafted from its own columns (the "new user" case).

    `common.contract_draft.draft_contract` on the whole file, as `atoll contract draft` would,
    with the reference contract's label, id and task; columns the reference contract drops for
    leakage (bank: `duration`) are dropped here too.
    """
    import yaml

    from bench.datasets import DATASETS, load_silos
    from client.data_source import ensure_id, read_records
    from common.contract import load_contract
    from common.contract_draft import draft_contract

    spec = DATASETS[name]
    base = load_contract(spec.contract)
    frame = ensure_id(read_records(spec.csv), base.id)
    draft = draft_contract(
        frame.drop(columns=[c for c in base.drop if c in frame.columns]),
        label=base.label.column,
        positive=str(base.label.positive),
        id_column=base.id,
        task=base.task,
        name=f"{base.name}-draft",
    )
    doc = yaml.safe_load(draft.yaml)
    doc["drop"] = sorted(set(doc.get("drop") or []) | set(base.drop))
    path = OUT / f"{name}-draft.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    DATASETS[f"{name}-draft"] = replace(spec, name=f"{name}-draft", contract=path.resolve())
    return load_silos(f"{name}-draft")


def _corner_spec() -> Any:
    """Synthetic "unseen" data like the issue's, as a CSV with a contract written from its columns.

    12 right-skewed amounts (lognormal), one 4-valued category, a region (3 nodes, different base
    rates); the label is logistic in the log-amounts. The contract gives every amount the data's
    own min/max — what a new user writes — so most rows sit below 0.05 of the range. `--variants
    draft` runs it under `atoll contract draft`'s proposal (log1p + centre/scale) instead.
    """
    import pandas as pd
    import yaml

    from bench.datasets import DATASETS, DatasetSpec

    if "corner" in DATASETS:
        return DATASETS["corner"]
    rng = np.random.default_rng(7)
    n, features = 12_000, 12
    w = rng.normal(0, 1.0, features)
    raw = rng.lognormal(0.0, 1.0, (n, features)).round(2) + 0.01
    cat = rng.integers(0, 4, n)
    region = rng.integers(0, 3, n)
    logit = np.log(raw) @ w * 1.2 + np.array([0.5, -0.5, 0.0, 1.0])[cat] - 1.0 + 0.5 * region
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    frame = pd.DataFrame({f"amount_{j}": raw[:, j] for j in range(features)})
    frame.insert(0, "customer_id", [f"c{i:06d}" for i in range(n)])
    frame["segment"] = np.array(["a", "b", "c", "d"])[cat]
    frame["region"] = np.array(["north", "south", "east"])[region]
    frame["label"] = np.where(y, "yes", "no")
    OUT.mkdir(parents=True, exist_ok=True)
    csv = OUT / "corner.csv"
    frame.to_csv(csv, index=False)
    contract = {
        "name": "corner",
        "version": 1,
        "task": "churn",
        "label": {"column": "label", "positive": "yes"},
        "id": "customer_id",
        "drop": ["region"],
        "features": [
            {"name": f"amount_{j}", "type": "numeric", "min": float(raw[:, j].min()),
             "max": float(raw[:, j].max())}
            for j in range(features)
        ]
        + [{"name": "segment", "type": "categorical", "vocabulary": ["a", "b", "c", "d"]}],
    }  # fmt: skip
    path = OUT / "corner.yaml"
    path.write_text(yaml.safe_dump(contract, sort_keys=False))
    DATASETS["corner"] = DatasetSpec("corner", csv.resolve(), path.resolve(), "region", 3)
    return DATASETS["corner"]


def _load_naive(name: str) -> Any:
    import yaml

    from bench.datasets import DATASETS, load_silos
    from client.data_source import read_records

    spec = DATASETS[name]
    doc = yaml.safe_load(spec.contract.read_text())
    frame = read_records(spec.csv)
    for feature in doc["features"]:
        if feature.get("type") == "numeric" and "transform" not in feature:
            values = frame[feature["name"]].astype(str).str.strip()
            numbers = values[values != ""].astype(float)
            feature["min"], feature["max"] = float(numbers.min()), float(numbers.max())
            if isinstance(feature.get("impute"), int | float):  # stays inside the new range
                low, high = feature["min"], feature["max"]
                feature["impute"] = min(max(float(feature["impute"]), low), high)
            feature.pop("center", None)
            feature.pop("scale", None)
    doc["name"] = f"{doc['name']}-naive"
    path = OUT / f"{name}-naive.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    DATASETS[f"{name}-naive"] = replace(spec, name=f"{name}-naive", contract=path.resolve())
    return load_silos(f"{name}-naive")


# ---- one run: the product's numbers next to the truth ---------------------------------------


def one_run(data: Data, s: Setting, seed: int) -> dict[str, Any]:
    t0 = time.monotonic()
    run = product_run(data.silos, data.x_test, data.y_test, s, seed, data.layout)
    raw, true, rep = run["raw"], run["published"], run["reported"]
    row: dict[str, Any] = {
        "dataset": data.name,
        "setting": s.label,
        "seed": seed,
        "sigma_train": round(run["sigma"], 3),
        "epsilon_spent": round(run["epsilon"], 3),
        "raw_auc": raw["roc_auc"],
        "raw_log_loss": raw["log_loss"],
        "true_auc": true["roc_auc"],
        "true_log_loss": true["log_loss"],
        "true_brier": true["brier"],
        "base_log_loss": base_log_loss(true["positive_rate"]),
        "calibration": run["calibration"],
        "seconds": round(time.monotonic() - t0, 1),
    }
    for key in ("roc_auc", "log_loss", "brier"):
        row[f"rep_{key}"] = rep[key]["estimate"]
        row[f"ci_{key}"] = rep[key]["ci95"]
        row[f"covered_{key}"] = rep[key]["covered"]
    return row


def honesty(data: Data, s: Setting, seed: int, repeats: int) -> dict[str, Any]:
    """Coverage and bias of the reported numbers over many noise draws of ONE trained model.

    The held-out rows are fixed, so what varies between runs of the final evaluation is only the
    DP noise: redraw it `repeats` times (the nodes' own `evaluate`), calibrate and estimate each
    time, and compare with the true metrics of the model published that time.
    """
    from server.calibration import publish_calibrated

    model, _ = federate(data.silos, data.n_features, s, seed, data.layout)
    final_sigma = final_noise(s.train_config())
    hits = {k: 0 for k in ("roc_auc", "log_loss", "brier")}
    errors: dict[str, list[float]] = {k: [] for k in hits}
    widths: dict[str, list[float]] = {k: [] for k in hits}
    for r in range(repeats):
        releases = final_releases(data.silos, model, s, 100_000 + 1000 * seed + r)
        pub = publish_calibrated(
            s.model, model.state_dict(), releases, final_sigma, calibrate=s.calibrate, draws=200
        )
        assert pub.report is not None
        published = build_model(s.model, data.n_features, layout=data.layout)
        published.load_state_dict(pub.state)
        true = true_metrics(published, data.x_test, data.y_test)
        for k in hits:
            est = pub.report.metrics[k]
            hits[k] += int(est.ci95[0] <= true[k] <= est.ci95[1])
            errors[k].append(est.estimate - true[k])
            widths[k].append(est.ci95[1] - est.ci95[0])
    out: dict[str, Any] = {"dataset": data.name, "setting": s.label, "seed": seed}
    for k in hits:
        out[f"{k}_coverage"] = hits[k] / repeats
        out[f"{k}_bias"] = float(np.mean(errors[k]))
        out[f"{k}_sd"] = float(np.std(errors[k]))
        out[f"{k}_width"] = float(np.mean(widths[k]))
    out["true_auc"] = true_metrics(model, data.x_test, data.y_test)["roc_auc"]
    return out


# ---- grids -----------------------------------------------------------------------------------

D = Setting(label="defaults")
# the defaults before this sweep (5 rounds × 50 steps at q 0.02, Adam 0.02, σ 10 evaluations)
OLD = replace(
    D, rounds=5, sample_rate=0.02, learning_rate=0.02, eval_noise=10.0, final_eval_noise=0.0,
    label="old defaults",
)  # fmt: skip
GRIDS: dict[str, list[Setting]] = {
    "default": [D],
    "old-vs-new": [OLD, D],
    # the evidence for the defaults, each alternative changing one thing (ε = 1 per node)
    "evidence": [
        OLD,
        D,
        replace(D, epsilon=1000.0, label="defaults at ε 1000 (σ floor 0.5)"),
        replace(D, learning_rate=0.02, label="lr 0.02"),
        replace(D, learning_rate=0.1, label="lr 0.1"),
        replace(D, sample_rate=0.02, label="q 0.02 (50 steps/round)"),
        replace(D, sample_rate=0.2, label="q 0.2 (5 steps/round)"),
        replace(D, rounds=5, label="5 rounds"),
        replace(D, rounds=20, label="20 rounds"),
        replace(D, max_grad_norm=0.3, label="clip 0.3"),
        replace(D, max_grad_norm=3.0, label="clip 3"),
        replace(D, optimizer="sgd", learning_rate=1.0, label="sgd 1.0"),
        replace(D, model="mlp", learning_rate=0.02, label="mlp, lr 0.02"),
        replace(
            D,
            strategy="fedavgm",
            server_learning_rate=0.5,
            server_momentum=0.9,
            label="fedavgm 0.5, momentum 0.9",
        ),
        replace(
            D,
            strategy="fedadam",
            server_learning_rate=0.1,
            server_momentum=0.9,
            label="fedadam 0.1",
        ),
    ],  # fmt: skip
    # the additive model (fixed piecewise-linear basis on the contract's bounds) against logreg,
    # on the reference contracts and on contracts nobody tuned (--variants draft naive, corner)
    "additive": [
        D,
        replace(D, model="additive", label="additive"),
        replace(D, model="additive", learning_rate=0.02, label="additive, lr 0.02"),
    ],
    # the learning-rate schedule over the rounds (client.schedule): cosine to a fraction of lr
    "lr-schedule": [
        replace(D, learning_rate_final=1.0, label="constant lr"),
        replace(D, learning_rate_final=0.1, label="cosine to 0.1 lr"),
        replace(D, learning_rate_final=0.3, label="cosine to 0.3 lr"),
    ],
    # how the run's evaluation budget is split (same total ε): honesty of the reported numbers
    "final-eval": [
        replace(D, eval_noise=10.0, final_eval_noise=0.0, label="every evaluation at σ 10"),
        replace(D, eval_noise=30.0, final_eval_noise=5.0, label="rounds σ 30, final σ 5"),
        D,
        replace(D, eval_noise=0.0, final_eval_noise=4.0, label="final only, σ 4"),
    ],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["telco", "bank"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--grid", default="default", choices=list(GRIDS))
    p.add_argument(
        "--variants",
        nargs="+",
        default=[""],
        help="contract variants: '' (reference), draft, naive (data min/max ranges)",
    )
    p.add_argument("--set", nargs="*", default=[], help="override KEY=VALUE on every setting")
    p.add_argument("--out", default="")
    p.add_argument(
        "--honesty",
        type=int,
        default=0,
        help="instead: coverage of the reported intervals over N noise draws per trained model",
    )
    args = p.parse_args()
    torch.set_num_threads(1)  # 2 shared cores: one thread is several times faster here
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("opacus").setLevel(logging.ERROR)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    settings = [_override(s, args.set) for s in GRIDS[args.grid]]
    rows = []
    for name in args.datasets:
        for variant in args.variants:
            data = load(name, variant)
            for s in settings:
                for seed in args.seeds:
                    if args.honesty:
                        h = honesty(data, s, seed, args.honesty)
                        rows.append({**h, "config": asdict(s)})
                        print(_honesty_line(h), flush=True)
                        continue
                    row = one_run(data, s, seed)
                    rows.append({**row, "config": asdict(s)})
                    print(_line(row), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else OUT / f"{args.grid}-{int(time.time())}.json"
    out.write_text(json.dumps(rows, indent=1, default=float))
    if not args.honesty:
        print(_table(rows))
    print(f"wrote {out}")


def _override(s: Setting, items: list[str]) -> Setting:
    changes = s.overrides(items)
    if changes:
        suffix = ",".join(f"{k}={v}" for k, v in changes.items())
        changes["label"] = f"{s.label}[{suffix}]"
    return replace(s, **changes)


def _honesty_line(h: dict[str, Any]) -> str:
    head = f"{h['dataset']:>12} {h['setting']:<28} seed={h['seed']} AUC {h['true_auc']:.4f} "
    return head + " ".join(
        f"| {k}: cov {h[f'{k}_coverage']:.2f} bias {h[f'{k}_bias']:+.4f} sd {h[f'{k}_sd']:.4f} "
        f"width {h[f'{k}_width']:.3f}"
        for k in ("roc_auc", "log_loss", "brier")
    )


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['dataset']:>12} {r['setting']:<28} seed={r['seed']} σ={r['sigma_train']:.2f} "
        f"raw AUC {r['raw_auc']:.4f} LL {r['raw_log_loss']:.4f} | published AUC "
        f"{r['true_auc']:.4f} LL {r['true_log_loss']:.4f} (base {r['base_log_loss']:.3f}) | "
        f"reported AUC {r['rep_roc_auc']:.4f} [{r['ci_roc_auc'][0]:.3f}, {r['ci_roc_auc'][1]:.3f}]"
        f" LL {r['rep_log_loss']:.4f} [{r['ci_log_loss'][0]:.3f}, {r['ci_log_loss'][1]:.3f}]"
        f" cov {int(r['covered_roc_auc'])}{int(r['covered_log_loss'])} {r['seconds']}s"
    )


def _table(rows: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["setting"]), []).append(r)
    lines = [
        "| data set | setting | seeds | AUC | log loss | reported AUC − true | AUC covered | "
        "reported LL − true | LL covered |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (ds, st), rs in groups.items():
        auc = np.array([r["true_auc"] for r in rs])
        ll = np.array([r["true_log_loss"] for r in rs])
        d_auc = np.array([r["rep_roc_auc"] - r["true_auc"] for r in rs])
        d_ll = np.array([r["rep_log_loss"] - r["true_log_loss"] for r in rs])
        lines.append(
            f"| {ds} | {st} | {len(rs)} | {auc.mean():.4f} ± {auc.std():.4f} | "
            f"{ll.mean():.4f} ± {ll.std():.4f} | {d_auc.mean():+.4f} "
            f"(max |{np.abs(d_auc).max():.3f}|)"
            f" | {sum(r['covered_roc_auc'] for r in rs)}/{len(rs)} | {d_ll.mean():+.4f} | "
            f"{sum(r['covered_log_loss'] for r in rs)}/{len(rs)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
