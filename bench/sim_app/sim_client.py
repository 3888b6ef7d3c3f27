"""Simulation ClientApp: one node = one synthetic partition, one round of the project's DP-SGD.

The training settings are the run config's defaults (`common.run_config.RunConfig`, the same
values `make demo` runs with): fixed noise, no target ε, no noised evaluation (the simulation's
ServerApp evaluates centrally). `train_dp` is called as the node runtime calls it, with the
node's public size bucket as `public_rows`; the reply's `num-examples` is 1.0, as a real node's.
"""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from sim_common import contract, partition

from client.runtime.config import bucket_of, parse_bucket
from client.training import DPTrainConfig, train_dp
from common.encoding import Encoder
from common.model import build_model
from common.run_config import RunConfig

logging.getLogger("opacus").setLevel(logging.ERROR)
app = ClientApp()


def train_config(total_rounds: int) -> DPTrainConfig:
    """A full DPTrainConfig from the run-config defaults (fixed noise, no evaluation releases)."""
    d = RunConfig.default
    return DPTrainConfig(
        epochs=int(d("local-epochs")),
        sample_rate=float(d("sample-rate")),
        learning_rate=float(d("learning-rate")),
        learning_rate_final=float(d("learning-rate-final")),
        max_grad_norm=float(d("max-grad-norm")),
        noise_multiplier=float(d("noise-multiplier")),
        target_epsilon=0.0,
        delta=float(d("delta")),
        total_rounds=total_rounds,
        eval_noise=0.0,
        eval_bins=int(d("eval-bins")),
        proximal_mu=float(d("proximal-mu")),
        optimizer=str(d("optimizer")),
        final_eval_noise=0.0,
        drift_reference_noise=0.0,
        drift_bins=0,
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Generate this node's rows (seeded by its partition id) and train one DP-SGD round."""
    pid = int(context.node_config["partition-id"])
    rc = context.run_config
    x, y = partition(int(rc["rows-per-node"]), seed=10_000 + pid)
    model = build_model("logreg", Encoder(contract()).n_features)
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    cfg = train_config(int(rc["num-server-rounds"]))
    result = train_dp(
        model, x, y, cfg, cfg.noise_multiplier, public_rows=parse_bucket(bucket_of(len(x)))[0]
    )
    metrics = MetricRecord({"num-examples": 1.0})  # equal weights, as the real nodes send
    return Message(
        RecordDict({"arrays": ArrayRecord(result.state), "metrics": metrics}), reply_to=msg
    )
