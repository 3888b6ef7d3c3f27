"""The hostile app's ServerApp: a coordinator that attacks its own nodes and records every reply.

Run config (pyproject.toml): `phase` is "batch" (a run whose first request asks for a batch below
the owner's minimum: that check needs the node's public size, so it is the run's first message)
or "attack" (everything else, one run); `report-path` is where the JSON report goes;
`contract-hash` and `n-features` describe the agreed contract; `targets` is JSON
{node id: {label: path}} for `query.steal`; `oracle-messages` is the size of oracle variants A, B.

The report holds one record per request: the attack, the node, its parameter, the outcome
("answered" or "refused" with the refusal code) and the reply's content exactly as Flower
serialises it (base64 of the RecordDict proto).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid, ServerApp

from common import wire

app = ServerApp()
HIDDEN = 32  # common.model.build_model("mlp", ...)
TIMEOUT = 1500.0
STEAL = f"{MessageType.QUERY}.steal"
GOOD: dict[str, Any] = {  # a well-formed mlp run of 3 rounds; contract-hash comes from config
    "model": "mlp",
    "local-epochs": 1,
    "sample-rate": 0.05,
    "learning-rate": 0.5,
    "learning-rate-final": 1.0,
    "max-grad-norm": 1.0,
    "noise-multiplier": 1.0,
    "target-epsilon": 0.0,
    "delta": 1e-5,
    "total-rounds": 3,
    "eval-noise": 10.0,
    "eval-bins": 20,
    "proximal-mu": 0.0,
    "server-round": 1,
    "optimizer": "adam",
}
OUT_OF_BOUNDS: dict[str, dict[str, Any]] = {
    "sample-rate-tiny": {"sample-rate": 1e-9},
    "eval-bins-huge": {"eval-bins": 10**7},
    "total-rounds-huge": {"total-rounds": 10**6},
    "local-epochs-huge": {"local-epochs": 1000},
    "noise-tiny": {"noise-multiplier": 0.01},
    "learning-rate-final-huge": {"learning-rate-final": 50.0},
    "model-transformer": {"model": "transformer"},
    "contract-hash-other": {"contract-hash": "0" * 64},
}
Weights = dict[str, np.ndarray]
Build = Callable[[int, Any], RecordDict]  # (node id, parameter) -> message content


def mlp(n_features: int, *, t: float | None = None, out: float = 0.0) -> Weights:
    """The contract's mlp. With `t`: hidden unit 0 is relu(x0 - t), weighted `out` in the logit,
    every other weight 0 (the threshold oracle). Without: small random starting weights."""
    shapes = {
        "0.weight": (HIDDEN, n_features),
        "0.bias": (HIDDEN,),
        "2.weight": (1, HIDDEN),
        "2.bias": (1,),
    }
    if t is None:
        rng = np.random.default_rng(0)
        return {k: rng.normal(0.0, 0.1, s).astype(np.float32) for k, s in shapes.items()}
    w = {k: np.zeros(s, dtype=np.float32) for k, s in shapes.items()}
    w["0.weight"][0, 0], w["0.bias"][0], w["2.weight"][0, 0] = 1.0, -t, out
    return w


def request(settings: dict[str, Any], weights: Weights | None = None) -> RecordDict:
    arrays = None if weights is None else ArrayRecord({k: Array(v) for k, v in weights.items()})
    return wire.request(wire.settings_record(settings), arrays)


def fixed(settings: dict[str, Any], weights: Weights | None = None) -> Build:
    """The same request content for every node and parameter."""
    return lambda _node, _param: request(settings, weights)


def outcome(reply: Message | None) -> dict[str, Any]:
    if reply is None:
        return {"outcome": "no-reply"}
    refusal = wire.refusal_of(reply)
    out: dict[str, Any] = (
        {"outcome": "answered"}
        if refusal is None
        else {"outcome": "refused", "code": refusal.code, "message": refusal.message}
    )
    if reply.has_error():
        return out
    raw = recorddict_to_proto(reply.content).SerializeToString(deterministic=True)
    out["content"] = base64.b64encode(raw).decode()
    for name in ("stolen", wire.METRICS):
        if name in reply.content:
            out[name] = dict(reply.content[name].items())
    return out


class Attacker:
    def __init__(self, grid: Grid, nodes: list[int], report: Path, run_id: int) -> None:
        self.grid, self.nodes, self.report, self.run_id = grid, nodes, report, run_id
        self.records: list[dict[str, Any]] = []

    def send(self, attack: str, kind: str, build: Build, params: list[Any] | None = None) -> None:
        """One message per node and parameter, all at once; record every reply."""
        sent = [
            (node, p, Message(build(node, p), dst_node_id=node, message_type=kind))
            for node in self.nodes
            for p in params or [None]
        ]
        replies = {
            r.metadata.reply_to_message_id: r
            for r in self.grid.send_and_receive([m for *_, m in sent], timeout=TIMEOUT)
        }
        for node, p, msg in sent:
            reply = replies.get(msg.metadata.message_id)
            self.records.append(
                {
                    "attack": attack,
                    "node_id": node,
                    "param": p,
                    "kind": kind,
                    "request_id": msg.metadata.message_id,
                    **outcome(reply),
                }
            )
        codes = sorted({r.get("code", r["outcome"]) for r in self.records[-len(sent) :]})
        print(f"HOSTILE {attack}: {len(sent)} messages, outcomes {codes}", flush=True)
        report = {"run_id": self.run_id, "nodes": self.nodes, "records": self.records}
        self.report.write_text(json.dumps(report))


def oracle(settings: dict[str, Any], n: int, out: float) -> Build:
    """The threshold oracle at the message's parameter t."""
    return lambda _node, t: request(settings, mlp(n, t=t, out=out))


def attack_all(a: Attacker, good: dict[str, Any], n: int, cfg: dict[str, Any]) -> None:
    start = mlp(n)
    neg_inf = {k: np.full_like(v, -np.inf) for k, v in start.items()}
    wide = {**start, "0.weight": np.zeros((HIDDEN, n + 1), np.float32)}
    missing = {k: v for k, v in start.items() if k != "2.bias"}
    huge = {k: np.full_like(v, 1e3) for k, v in start.items()}
    ts = [round(float(t), 4) for t in np.linspace(-0.5, 1.5, int(cfg["oracle-messages"]))]
    fused = {**good, "evaluate-incoming": True, "server-round": 2}  # train evaluates its input
    final = {**good, "server-round": good["total-rounds"]}  # finish evaluates the final model
    targets = json.loads(str(cfg["targets"]))

    a.send("rollcall", wire.ROLLCALL, fixed(good))  # a: the run holds a reservation
    a.send("train", wire.TRAIN, fixed(good, start))  # a normal round: answered and charged
    a.send("oracle-A", wire.EVALUATE, oracle(good, n, np.inf), ts)  # b
    a.send("oracle-B", wire.EVALUATE, oracle(good, n, 1e4), ts)
    a.send("oracle-C", wire.EVALUATE, oracle(good, n, 20.0), [0.0, 0.5, 1.0])
    a.send("oracle-A-in-train", wire.TRAIN, oracle(fused, n, np.inf), ts[:5])
    a.send("train-neg-inf", wire.TRAIN, fixed(good, neg_inf))  # c
    a.send("shape-extra-column", wire.TRAIN, fixed(good, wide))  # d
    a.send("shape-missing-tensor", wire.TRAIN, fixed(good, missing))
    a.send("huge-norm", wire.TRAIN, fixed(good, huge))  # e
    for attack, change in OUT_OF_BOUNDS.items():  # f, g
        a.send(attack, wire.TRAIN, fixed({**good, **change}, start))
    no_hash = {k: v for k, v in good.items() if k != "contract-hash"}
    a.send("contract-hash-missing", wire.TRAIN, fixed(no_hash, start))
    beyond = {**good, "server-round": good["total-rounds"] + 1}  # h
    a.send("server-round-beyond", wire.TRAIN, fixed(beyond, start))
    a.send("finish", wire.FINISH, oracle(final, n, np.inf), [0.5])  # closes; final model refused
    a.send("replay-train", wire.TRAIN, fixed(good, start))  # the round-1 request, once more
    steal = {
        str(node): RecordDict({wire.CONFIG: ConfigRecord(paths)}) for node, paths in targets.items()
    }
    a.send("steal", STEAL, lambda node, _p: steal[str(node)])  # i


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = dict(context.run_config)
    deadline = time.monotonic() + 300
    while len(nodes := sorted(grid.get_node_ids())) < int(cfg["min-nodes"]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} node(s) connected")
        time.sleep(1.0)
    a = Attacker(grid, nodes, Path(str(cfg["report-path"])), context.run_id)
    good = {**GOOD, "contract-hash": str(cfg["contract-hash"])}
    if cfg["phase"] == "batch":
        a.send("batch-too-small", wire.ROLLCALL, fixed({**good, "sample-rate": 0.002}))
        a.send("batch-finish", wire.FINISH, fixed({}))
    else:
        attack_all(a, good, int(cfg["n-features"]), cfg)
    print(f"HOSTILE done: {len(a.records)} requests", flush=True)
