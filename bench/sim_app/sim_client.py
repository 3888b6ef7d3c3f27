"""Simulation ClientApp: one node = one synthetic partition, one round of the project's DP-SGD."""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from sim_common import contract, partition

from client.training import DPTrainConfig, train_dp
from common.encoding import Encoder
from common.model import build_model

logging.getLogger("opacus").setLevel(logging.ERROR)
app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Generate this node's rows (seeded by its partition id) and train one DP-SGD round."""
    pid = int(context.node_config["partition-id"])
    rc = context.run_config
    x, y = partition(int(rc["rows-per-node"]), seed=10_000 + pid)
    model = build_model("logreg", Encoder(contract()).n_features)
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    cfg = DPTrainConfig(
        sample_rate=float(rc["sample-rate"]),
        learning_rate=float(rc["learning-rate"]),
        max_grad_norm=float(rc["max-grad-norm"]),
        noise_multiplier=float(rc["noise-multiplier"]),
        total_rounds=int(rc["num-server-rounds"]),
        eval_noise=0.0,
    )
    result = train_dp(model, x, y, cfg, cfg.noise_multiplier)
    metrics = MetricRecord({"num-examples": len(x), "train-loss": result.train_loss})
    return Message(
        RecordDict({"arrays": ArrayRecord(result.state), "metrics": metrics}), reply_to=msg
    )
