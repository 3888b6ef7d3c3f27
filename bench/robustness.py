"""Robustness of the aggregation strategies to one hostile node of five (issue 13, item 2).

    .venv/bin/python -m bench.robustness --seeds 0 1 2

Telco split by `Contract` (`atoll.partition.partition_csv`, loaded as each node loads it:
`bench.datasets.load_silos`) gives three silos; the largest (month-to-month) is cut into three
by row, so there are five nodes. Node `m2m-1` is hostile: after training honestly it replaces its
weights like tests/adversary/hostile_runtime.py does — `scale` (update × 100), `flip` (update ×
−1), `nan` — or stays honest (`clean`). Each strategy (`fedavg`, `fedmedian`, `fedtrimmedavg`,
`fedavg-clipped`) runs the run-config defaults (5 rounds, σ = 1) with every attack.

In process, with the product's own code: each node's round is `client.training.train_dp`
through `bench.dp.train_round_dp` (as the node runtime calls it), replies are real Flower
messages built by `common.wire.train_content`, and the aggregation is the coordinator's
`server.strategies.make_strategy(...).aggregate_train` — reply checks and weight caps included.
What it does not model: a node's admission of the incoming global weights. A deployed node
refuses a global model whose L2 norm exceeds its owner's `max_weight_norm` (default 100), so a
run whose global model grew past it would fail there: `max_norm` and `over_node_limit` say so.

Reported per strategy × attack: the held-out ROC AUC (sklearn, on every silo's test rows) of the
final model, and its difference to the same strategy's clean run with the same seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.supercore.task_identity import TaskIdentity
from sklearn.metrics import roc_auc_score

from bench.datasets import Silo, SiloData, load_silos
from bench.dp import LocalHyper, make_config, node_noise, train_round_dp
from common import wire
from common.model import build_model, predict_logits
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from common.run_config import RunConfig
from privacy.limits import RequestLimits
from server.fleet import RunFailed

log = logging.getLogger("robustness")
RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "fedavg-clipped")
ATTACKS = ("clean", "scale", "flip", "nan")
FACTORS = {"scale": 100.0, "flip": -1.0}
HOSTILE = "m2m-1"
NODE_LIMIT = RequestLimits().max_weight_norm


@dataclass
class Node:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray


def five_nodes(data: SiloData) -> list[Node]:
    """The three Contract silos, the largest cut into three by row (every third row)."""
    silos: list[Silo] = sorted(data.silos, key=lambda s: -len(s.x_train))
    big, rest = silos[0], silos[1:]
    nodes = [Node(f"m2m-{i + 1}", big.x_train[i::3], big.y_train[i::3]) for i in range(3)]
    nodes += [
        Node("-".join(s.values).lower().replace(" ", "")[:20], s.x_train, s.y_train) for s in rest
    ]
    return nodes


class _Grid:
    def __init__(self, n: int) -> None:
        self.nodes = list(range(1, n + 1))

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _attack(state: dict[str, np.ndarray], start: dict[str, np.ndarray], attack: str) -> None:
    for k, v in state.items():
        if attack == "nan":
            state[k] = np.full_like(v, np.nan)
        elif attack in FACTORS:
            state[k] = start[k] + FACTORS[attack] * (v - start[k])


def _reply(ask: Message, state: dict[str, np.ndarray], epsilon: float) -> Message:
    weights = pb.Weights(tensors=[wire.tensor_of(k, v) for k, v in state.items()])
    trained = pb.Trained(
        weights=weights,
        noise_multiplier=1.0,
        sample_rate=float(RunConfig.default("sample-rate")),
        steps=1,
        budget=pb.Budget(epsilon_run=epsilon),
    )
    reply = Message(wire.train_content(pb.TrainReply(trained=trained)), reply_to=ask)
    reply.metadata.__dict__["_src_node_id"] = ask.metadata.dst_node_id  # as the SuperLink does
    return reply


def one_run(
    nodes: list[Node], n_features: int, strategy_name: str, attack: str, seed: int, rounds: int
) -> dict[str, Any]:
    from server.strategies import make_strategy

    cfg = make_config(LocalHyper(), total_rounds=rounds)
    torch.manual_seed(seed)
    model = build_model("logreg", n_features)
    strategy = make_strategy(strategy_name, evaluate=False, min_nodes=2)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    arrays = ArrayRecord(model.state_dict())
    max_norm, dropped, failed = 0.0, 0, ""
    for rnd in range(1, rounds + 1):
        asks = list(strategy.configure_train(rnd, arrays, ConfigRecord(), _Grid(len(nodes))))
        start = {k: v.detach().numpy().copy() for k, v in arrays.to_torch_state_dict().items()}
        replies = []
        for ask in asks:
            i = ask.metadata.dst_node_id
            node = nodes[i - 1]
            local = build_model("logreg", n_features)
            local.load_state_dict(arrays.to_torch_state_dict())
            res = train_round_dp(
                local, node.x_train, node.y_train, cfg, seed=(seed * 1000 + rnd) * 100 + i
            )
            state = {k: v.detach().numpy().astype(np.float32) for k, v in res.state.items()}
            if node.name == HOSTILE:
                _attack(state, start, attack)
            TaskIdentity.node_id = i
            replies.append(_reply(ask, state, 0.1 * rnd))
        TaskIdentity.node_id = 0
        try:
            out, _ = strategy.aggregate_train(rnd, replies)
        except RunFailed as err:
            failed = str(err)
            break
        dropped += len(strategy.failures[rnd])
        assert out is not None
        arrays = out
        norm = float(np.sqrt(sum(float(np.sum(a**2)) for a in arrays.to_numpy_ndarrays())))
        max_norm = max(max_norm, norm)
    model.load_state_dict(arrays.to_torch_state_dict())
    return {
        "strategy": strategy_name,
        "attack": attack,
        "seed": seed,
        "dropped_replies": dropped,
        "failed": failed,
        "max_norm": round(max_norm, 3),
        "over_node_limit": max_norm > NODE_LIMIT,
        "_model": model,
    }


def held_out_auc(model: torch.nn.Module, data: SiloData) -> float:
    x, y = data.global_test()
    z = predict_logits(model, x).astype(np.float64)
    if not np.all(np.isfinite(z)):
        return float("nan")
    return float(roc_auc_score(y, z))


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    clean = {(r["strategy"], r["seed"]): r["auc"] for r in rows if r["attack"] == "clean"}
    out = []
    for s in STRATEGIES:
        for a in ATTACKS:
            sel = [r for r in rows if r["strategy"] == s and r["attack"] == a]
            if not sel:
                continue
            diffs = [r["auc"] - clean[(s, r["seed"])] for r in sel]
            out.append(
                {
                    "strategy": s,
                    "attack": a,
                    "auc_mean": round(float(np.mean([r["auc"] for r in sel])), 4),
                    "delta_vs_clean_mean": round(float(np.mean(diffs)), 4),
                    "delta_vs_clean_worst": round(float(min(diffs, key=lambda d: -abs(d))), 4),
                    "within_0.02": bool(all(abs(d) <= 0.02 for d in diffs)),
                    "dropped_replies": sum(r["dropped_replies"] for r in sel),
                    "max_norm": max(r["max_norm"] for r in sel),
                    "over_node_limit": any(r["over_node_limit"] for r in sel),
                    "failed": sum(bool(r["failed"]) for r in sel),
                }
            )
    return out


def write(summary: list[dict[str, Any]], rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "robustness.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=2) + "\n"
    )
    lines = [
        "# Robustness: one hostile node of five (Telco by Contract)",
        "",
        f"Command: `{meta['command']}` ({meta['seconds']:.0f} s). {meta['setup']}",
        "",
        "| strategy | attack | held-out AUC | Δ vs clean (mean) | Δ worst | within 0.02 "
        "| dropped replies | max ‖w‖ | over node limit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['strategy']} | {s['attack']} | {s['auc_mean']:.4f} | "
            f"{s['delta_vs_clean_mean']:+.4f} | {s['delta_vs_clean_worst']:+.4f} | "
            f"{'yes' if s['within_0.02'] else '**no**'} | {s['dropped_replies']} | "
            f"{s['max_norm']:.1f} | {'**yes**' if s['over_node_limit'] else 'no'} |"
        )
    lines += [
        "",
        f"Δ: the final model's held-out AUC minus the same strategy's clean run (same seed). "
        f"Over node limit: the global model's L2 norm exceeded the nodes' default "
        f"`max_weight_norm` ({NODE_LIMIT:g}) in some round, so deployed nodes would have refused "
        "it (`limit-weight-norm`) and the run would have failed instead of publishing.",
        "",
    ]
    (RESULTS / "robustness.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=int(RunConfig.default("rounds")))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    t0 = time.monotonic()
    data = load_silos("telco")
    nodes = five_nodes(data)
    rows = []
    for strategy in args.strategies:
        for attack in ATTACKS:
            for seed in args.seeds:
                run = one_run(nodes, data.n_features, strategy, attack, seed, args.rounds)
                run["auc"] = held_out_auc(run.pop("_model"), data)
                log.info("%s %s seed %s: AUC %.4f", strategy, attack, seed, run["auc"])
                rows.append(run)
    summary = summarize(rows)
    seeds = " ".join(map(str, args.seeds))
    cfg = make_config(LocalHyper(), total_rounds=args.rounds)
    meta = {
        "command": f".venv/bin/python -m bench.robustness --seeds {seeds} --rounds {args.rounds}",
        "seconds": time.monotonic() - t0,
        "setup": (
            f"Nodes: {', '.join(f'{n.name} ({len(n.x_train)} train rows)' for n in nodes)}; "
            f"hostile: {HOSTILE}. {args.rounds} rounds, σ = {node_noise(cfg):g}, "
            f"{LocalHyper().describe()}; seeds {seeds}."
        ),
    }
    write(summary, rows, meta)
    log.info("wrote %s", RESULTS / "robustness.md")


if __name__ == "__main__":
    main()
