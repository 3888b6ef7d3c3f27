"""Sweep of the run defaults: which training, calibration and estimation settings converge under DP.

    .venv/bin/python -m bench.quality_sweep --datasets telco bank --seeds 0 1 2 \
        --grid default                       # the chosen defaults, ε = 1 per node
    .venv/bin/python -m bench.quality_sweep --grid optimizers --seeds 0   # what was compared

Everything runs *in process* with the product's own code: each node's round is
`client.training.train_dp` (Opacus DP-SGD, noise calibrated per node with
`client.training.noise_multiplier` so the whole planned run — every training round and every
noised evaluation — spends at most ε, floored at the owner's minimum, update scaled by the node's
public size bucket), the aggregation is `server.strategies.make_strategy(...).aggregate_train` on
real Flower replies built by `common.wire`, each node's final evaluation is
`client.training.evaluate` on its held-out rows (the noised histograms it releases on `finish`),
and the coordinator's side is `server.calibration` + `common.estimation` on the pooled releases.

For every run it records the TRUE held-out metrics of the published (calibrated) model on the
union of the silos' test rows, and what the model card would report (estimate and 95 % interval
from the noised histograms), so the bias and coverage of the reported numbers can be read off.

Data: ../shared/data (read only), loaded through the node's own pipeline by `bench.datasets`.
`--variants draft naive` also runs each data set under contracts nobody tuned: one drafted from
its columns (`common.contract_draft`) and one whose numeric ranges are the data's own min/max
(amounts and counts squeezed into a corner of [0, 1]: the "new user" case of the issue).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.supercore.task_identity import TaskIdentity

from bench.dp import node_noise, public_rows
from client.training import DPTrainConfig, evaluate, train_dp
from common import wire
from common.metrics import binary_metrics
from common.model import build_model, predict_logits
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from common.run_config import RunConfig

log = logging.getLogger("sweep")
OUT = Path("runs/bench/quality_sweep")


def _d(key: str) -> Any:
    return RunConfig.default(key)


@dataclass(frozen=True)
class Setting:
    """One run configuration (RunConfig defaults unless a grid changes them)."""

    model: str = _d("model")
    optimizer: str = _d("optimizer")
    learning_rate: float = _d("learning-rate")
    sample_rate: float = _d("sample-rate")
    epochs: int = _d("local-epochs")
    rounds: int = _d("num-server-rounds")
    strategy: str = _d("strategy")
    server_learning_rate: float = _d("server-learning-rate")
    server_momentum: float = _d("server-momentum")
    max_grad_norm: float = _d("max-grad-norm")
    proximal_mu: float = _d("proximal-mu")
    epsilon: float = 1.0  # per node, the whole run (training + every evaluation)
    eval_noise: float = _d("eval-noise")
    eval_bins: int = _d("eval-bins")
    calibrate: bool = _d("calibrate")
    # What the proposed wire change would allow (not the product today): the final evaluation
    # (on finish) at its own σ; > 0 switches it on and per-round evaluations then use
    # `eval_noise` (0: none). The training noise is calibrated to the whole run either way.
    final_eval_noise: float = 0.0
    label: str = ""

    def train_config(self) -> DPTrainConfig:
        return DPTrainConfig(
            epochs=self.epochs,
            sample_rate=self.sample_rate,
            learning_rate=self.learning_rate,
            max_grad_norm=self.max_grad_norm,
            noise_multiplier=1.0,
            target_epsilon=self.epsilon,
            delta=1e-5,
            total_rounds=self.rounds,
            eval_noise=self.eval_noise,
            eval_bins=self.eval_bins,
            proximal_mu=self.proximal_mu,
            optimizer=self.optimizer,
        )


@dataclass
class Data:
    name: str
    silos: list[Any]
    n_features: int
    x_test: np.ndarray
    y_test: np.ndarray
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
            feature.pop("center", None)
            feature.pop("scale", None)
    doc["name"] = f"{doc['name']}-naive"
    path = OUT / f"{name}-naive.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    DATASETS[f"{name}-naive"] = replace(spec, name=f"{name}-naive", contract=path.resolve())
    return load_silos(f"{name}-naive")


# ---- one federated run ----------------------------------------------------------------------


class _Grid:
    """Just enough of a Flower Grid for a strategy's `configure_train`: the node ids."""

    def __init__(self, nodes: int) -> None:
        self.nodes = list(range(1, nodes + 1))

    def get_node_ids(self) -> list[int]:
        return self.nodes


WEIGHT_BY_BUCKET = False  # experiment: aggregation weight = public size bucket's lower end


def _reply(ask: Message, state: dict[str, torch.Tensor], rows: int = 1) -> Message:
    """A node's train reply as the relay builds it (`common.wire.train_content`)."""
    node = ask.metadata.dst_node_id
    weights = pb.Weights(tensors=[wire.tensor_of(k, v.detach().numpy()) for k, v in state.items()])
    trained = pb.Trained(weights=weights, noise_multiplier=1.0, sample_rate=0.02, steps=1)
    content = wire.train_content(pb.TrainReply(trained=trained))
    if WEIGHT_BY_BUCKET:
        content["metrics"][wire.NUM_EXAMPLES] = float(public_rows(rows))
    reply = Message(content, reply_to=ask)
    reply.metadata.__dict__["_src_node_id"] = node  # as delivered by the SuperLink
    return reply


def history(s: Setting, sigma: float) -> list[tuple[float, float, int]]:
    """Every release one node makes in the run: training rounds, per-round and final evaluations."""
    q = 1.0 / max(1, round(1 / s.sample_rate))
    steps = s.epochs * max(1, round(1 / s.sample_rate))
    events = [(sigma, q, steps)] * s.rounds
    if s.final_eval_noise > 0:
        events += [(s.eval_noise, 1.0, 1)] * (s.rounds - 1) if s.eval_noise > 0 else []
        events += [(s.final_eval_noise, 1.0, 1)]
    elif s.eval_noise > 0:
        events += [(s.eval_noise, 1.0, 1)] * s.rounds
    return events


def train_noise(s: Setting) -> float:
    """The σ a node trains with: the product's calibration, or (with a separate final evaluation)
    the same target ε solved for that plan by bisection on log σ; floored at the owner's minimum."""
    if s.final_eval_noise <= 0:
        return node_noise(s.train_config())
    from privacy.dp import epsilon

    lo, hi = math.log(0.3), math.log(200.0)
    if epsilon(history(s, math.exp(hi)), 1e-5) > s.epsilon:
        raise ValueError(f"{s.label}: evaluations alone exceed ε = {s.epsilon}")
    for _ in range(30):
        mid = (lo + hi) / 2
        if epsilon(history(s, math.exp(mid)), 1e-5) > s.epsilon:
            lo = mid
        else:
            hi = mid
    return max(math.exp(hi), 0.5)


def federate(data: Data, s: Setting, seed: int) -> tuple[torch.nn.Module, float]:
    """The coordinator's rounds with the nodes' own training; returns (global model, σ).

    The strategy is the product's (`make_strategy`): its own `configure_train` and
    `aggregate_train` run on real Flower messages, so server-side optimizers keep their state as
    in a deployed run.
    """
    from server.strategies import make_strategy

    cfg = s.train_config()
    sigma = train_noise(s)
    torch.manual_seed(seed)
    model = build_model(s.model, data.n_features)
    strategy = make_strategy(
        s.strategy,
        server_learning_rate=s.server_learning_rate,
        server_momentum=s.server_momentum,
        evaluate=False,
    )
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    grid = _Grid(len(data.silos))
    arrays = ArrayRecord(model.state_dict())
    for rnd in range(1, s.rounds + 1):
        asks = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
        start = arrays.to_torch_state_dict()
        replies = []
        for ask in asks:
            i = ask.metadata.dst_node_id
            silo = data.silos[i - 1]
            local = build_model(s.model, data.n_features)
            local.load_state_dict(start)
            res = train_dp(
                local,
                silo.x_train,
                silo.y_train,
                cfg,
                sigma,
                generator_seed=(seed * 1000 + rnd) * 1000 + i,
                public_rows=public_rows(len(silo.x_train)),
            )
            TaskIdentity.node_id = i
            replies.append(_reply(ask, res.state, len(silo.x_train)))
        TaskIdentity.node_id = 0
        out, _ = strategy.aggregate_train(rnd, replies)
        if out is None:
            raise RuntimeError("aggregation produced no model")
        arrays = out
    model.load_state_dict(arrays.to_torch_state_dict())
    return model, sigma


# ---- what the coordinator reports vs the truth ----------------------------------------------


def final_releases(data: Data, model: torch.nn.Module, s: Setting, seed: int) -> list[Any]:
    """Each node's `finish` release of the final model: noised histograms of its test rows."""
    rng = np.random.default_rng(10_000 + seed)
    sigma = s.final_eval_noise if s.final_eval_noise > 0 else s.eval_noise
    return [
        evaluate(model, silo.x_test, silo.y_test, sigma, s.eval_bins, rng=rng)
        for silo in data.silos
    ]


def true_metrics(model: torch.nn.Module, data: Data) -> dict[str, float]:
    z = predict_logits(model, data.x_test).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
    m = binary_metrics(data.y_test, p)
    return {k: m[k] for k in ("roc_auc", "log_loss", "brier", "positive_rate")}


def one_run(data: Data, s: Setting, seed: int) -> dict[str, Any]:
    from server.calibration import publish_calibrated

    t0 = time.monotonic()
    model, sigma = federate(data, s, seed)
    raw = true_metrics(model, data)
    releases = final_releases(data, model, s, seed)
    final_sigma = s.final_eval_noise if s.final_eval_noise > 0 else s.eval_noise
    pub = publish_calibrated(
        s.model, model.state_dict(), releases, final_sigma, calibrate=s.calibrate
    )
    published = build_model(s.model, data.n_features)
    published.load_state_dict(pub.state)
    true = true_metrics(published, data)
    assert pub.report is not None
    rep = pub.report.metrics
    row: dict[str, Any] = {
        "dataset": data.name,
        "setting": s.label,
        "seed": seed,
        "sigma_train": round(sigma, 3),
        "epsilon_spent": round(_spent(s, sigma), 3),
        "raw_auc": raw["roc_auc"],
        "raw_log_loss": raw["log_loss"],
        "true_auc": true["roc_auc"],
        "true_log_loss": true["log_loss"],
        "true_brier": true["brier"],
        "base_log_loss": _base_log_loss(true["positive_rate"]),
        "calibration": pub.report.calibration.as_dict() if pub.calibrated else None,
        "ll_optimism_removed": -rep["log_loss"].bias_corrected,
        "seconds": round(time.monotonic() - t0, 1),
    }
    for key in ("roc_auc", "log_loss", "brier"):
        est = rep[key]
        row[f"rep_{key}"] = est.estimate
        row[f"ci_{key}"] = list(est.ci95)
        truth = true[key]
        row[f"covered_{key}"] = bool(est.ci95[0] <= truth <= est.ci95[1])
    return row


def honesty(data: Data, s: Setting, seed: int, repeats: int) -> dict[str, Any]:
    """Coverage and bias of the reported numbers over many noise draws of ONE trained model.

    The held-out rows are fixed, so what varies between runs of the final evaluation is only the
    DP noise: redraw it `repeats` times (the nodes' own `evaluate`), calibrate and estimate each
    time, and compare with the true metrics of the model published that time.
    """
    from server.calibration import publish_calibrated

    model, sigma = federate(data, s, seed)
    final_sigma = s.final_eval_noise if s.final_eval_noise > 0 else s.eval_noise
    hits = {k: 0 for k in ("roc_auc", "log_loss", "brier")}
    errors: dict[str, list[float]] = {k: [] for k in hits}
    widths: dict[str, list[float]] = {k: [] for k in hits}
    for r in range(repeats):
        releases = final_releases(data, model, s, 100_000 + 1000 * seed + r)
        pub = publish_calibrated(
            s.model, model.state_dict(), releases, final_sigma, calibrate=s.calibrate, draws=200
        )
        assert pub.report is not None
        published = build_model(s.model, data.n_features)
        published.load_state_dict(pub.state)
        true = true_metrics(published, data)
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
    out["true_auc"] = true_metrics(model, data)["roc_auc"]
    return out


def _spent(s: Setting, sigma: float) -> float:
    from privacy.dp import epsilon

    return float(epsilon(history(s, sigma), 1e-5))


def _base_log_loss(rate: float) -> float:
    return float(-(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)))


# ---- grids -----------------------------------------------------------------------------------

D = Setting()
GRIDS: dict[str, list[Setting]] = {
    "default": [replace(D, label="defaults")],
    # the evidence for the defaults (README of the report): old vs new, and what was rejected
    "evidence": [
        replace(
            D, optimizer="sgd", learning_rate=0.5, max_grad_norm=1.0, calibrate=False,
            label="old: sgd 0.5, C 1, no calibration",
        ),
        replace(D, optimizer="sgd", learning_rate=0.5, max_grad_norm=1.0, label="sgd C1 + platt"),
        replace(D, max_grad_norm=1.0, label="adam 0.02 C1 + platt"),
        replace(D, max_grad_norm=2.0, label="adam 0.02 C2 + platt"),
        replace(D, learning_rate=0.05, label="adam 0.05 + platt"),
        replace(D, model="mlp", label="mlp adam 0.02 + platt"),
        replace(D, strategy="fedavgm", server_momentum=0.5, label="fedavgm m0.5 + platt"),
        replace(D, strategy="fedadam", server_learning_rate=0.1, server_momentum=0.9,
                label="fedadam 0.1 + platt"),
    ],  # fmt: skip
    # what a separate, more precise final evaluation (proposed wire field) would report
    "final-eval": [
        replace(D, label="defaults (5 evals at σ 10)"),
        replace(D, eval_noise=0.0, final_eval_noise=4.0, label="final only, σ 4"),
        replace(D, eval_noise=30.0, final_eval_noise=4.0, label="rounds σ 30 + final σ 4"),
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
    changes: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        current = getattr(s, key)
        changes[key] = (
            value.lower() in ("1", "true", "yes")
            if isinstance(current, bool)
            else type(current)(value)
        )
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
