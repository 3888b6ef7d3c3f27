"""Simulation ServerApp: FedAvg over every simulated node; writes per-round wall times as JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from sim_common import contract, partition

from common.encoding import Encoder
from common.metrics import binary_metrics
from common.model import build_model, predict_logits

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    rounds = int(rc["num-server-rounds"])
    torch.manual_seed(0)
    model = build_model("logreg", Encoder(contract()).n_features)
    x_test, y_test = partition(int(rc["test-rows"]), seed=999_999)
    marks: list[dict[str, float]] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Called after every round (and before the first): time stamp + global test AUC."""
        model.load_state_dict(arrays.to_torch_state_dict())
        p = 1.0 / (1.0 + np.exp(-predict_logits(model, x_test).astype(np.float64)))
        auc = binary_metrics(y_test, p)["roc_auc"]
        marks.append({"round": server_round, "t": time.time(), "roc_auc": auc})
        return MetricRecord({"roc_auc": auc})

    nodes = len(list(grid.get_node_ids()))
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
    )
    t0 = time.time()
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=rounds,
        train_config=ConfigRecord({}),
        evaluate_fn=evaluate,
    )
    out = {"nodes": nodes, "start": t0, "end": time.time(), "marks": marks}
    if rc.get("out-path"):
        Path(str(rc["out-path"])).write_text(json.dumps(out))
