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
`--draft` also runs each data set with a contract drafted from its own columns
(`common.contract_draft`), i.e. an encoding nobody tuned: the "new user" case.
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


def load(name: str, draft: bool) -> Data:
    from bench.datasets import load_silos

    data = _load_drafted(name) if draft else load_silos(name)
    xg, yg = data.global_test()
    return Data(
        name=name + ("-draft" if draft else ""),
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


def federate(data: Data, s: Setting, seed: int) -> tuple[torch.nn.Module, float]:
    """The coordinator's rounds with the nodes' own training; returns (global model, σ).

    The strategy is the product's (`make_strategy`): its own `configure_train` and
    `aggregate_train` run on real Flower messages, so server-side optimizers keep their state as
    in a deployed run.
    """
    from server.strategies import make_strategy

    cfg = s.train_config()
    sigma = node_noise(cfg)
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
    return [
        evaluate(model, silo.x_test, silo.y_test, s.eval_noise, s.eval_bins, rng=rng)
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
    pub = publish_calibrated(
        s.model, model.state_dict(), releases, s.eval_noise, calibrate=s.calibrate
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


def _base_log_loss(rate: float) -> float:
    return float(-(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)))


# ---- grids -----------------------------------------------------------------------------------

D = Setting()
GRIDS: dict[str, list[Setting]] = {
    "default": [replace(D, label="defaults")],
    "explore": [
        replace(D, optimizer="sgd", learning_rate=0.5, model="logreg", label="sgd-0.5-logreg"),
        replace(D, learning_rate=0.02, model="logreg", label="adam-0.02-logreg"),
        replace(D, learning_rate=0.05, model="logreg", label="adam-0.05-logreg"),
        replace(
            D, learning_rate=0.02, model="logreg", max_grad_norm=3.0, label="adam-0.02-logreg-C3"
        ),
        replace(D, learning_rate=0.02, model="mlp", label="adam-0.02-mlp"),
        replace(D, learning_rate=0.02, model="mlp", max_grad_norm=3.0, label="adam-0.02-mlp-C3"),
    ],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["telco", "bank"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--grid", default="default", choices=list(GRIDS))
    p.add_argument("--draft", action="store_true", help="also: contracts drafted from the data")
    p.add_argument("--set", nargs="*", default=[], help="override KEY=VALUE on every setting")
    p.add_argument("--out", default="")
    args = p.parse_args()
    torch.set_num_threads(1)  # 2 shared cores: one thread is several times faster here
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("opacus").setLevel(logging.ERROR)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    settings = [_override(s, args.set) for s in GRIDS[args.grid]]
    rows = []
    variants = [False, True] if args.draft else [False]
    for name in args.datasets:
        for draft in variants:
            data = load(name, draft)
            for s in settings:
                for seed in args.seeds:
                    row = one_run(data, s, seed)
                    rows.append({**row, "config": asdict(s)})
                    print(_line(row), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else OUT / f"{args.grid}-{int(time.time())}.json"
    out.write_text(json.dumps(rows, indent=1, default=float))
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
