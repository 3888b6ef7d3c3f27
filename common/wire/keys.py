"""Every key Atoll puts into or reads from a Flower message: named here and nowhere else."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from flwr.app import MessageType

# -- message types ------------------------------------------------------------------------------
ROLLCALL: Final = f"{MessageType.QUERY}.rollcall"
TRAIN: Final = MessageType.TRAIN
EVALUATE: Final = MessageType.EVALUATE
FINISH: Final = f"{MessageType.QUERY}.finish"

# -- record names inside a message ---------------------------------------------------------------
CONFIG: Final = "config"  # coordinator → node: the run's settings (ConfigRecord)
ARRAYS: Final = "arrays"  # weights both ways (Flower's strategies use this name)
METRICS: Final = "metrics"  # node → coordinator: numbers (MetricRecord)
INFO: Final = "info"  # node → coordinator: names (ConfigRecord)
REFUSAL: Final = "refusal"  # node → coordinator: a refusal instead of an answer (ConfigRecord)

# -- keys -----------------------------------------------------------------------------------------
NUM_EXAMPLES: Final = "num-examples"  # Flower's aggregation weight: public, never a count
HIST_POS, HIST_NEG, EVAL_NOISE = "hist-pos", "hist-neg", "eval-noise"
NODE_NAME, CONTRACT_HASH, SIZE_BUCKET = "node-name", "contract-hash", "size-bucket"
PLANNED_EPSILON, NOISE_MULTIPLIER = "planned-epsilon", "noise-multiplier"
SAMPLE_RATE, STEPS = "sample-rate", "steps"
CODE, MESSAGE = "code", "message"
# finish reply: the drift reference (every feature's noised histogram, concatenated) and its σ
DRIFT_REFERENCE, DRIFT_REFERENCE_NOISE = "drift-reference", "drift-reference-noise"
# RunSettings field → run-config key (the coordinator's settings travel under these names)
SETTINGS_KEYS: Final[Mapping[str, str]] = {
    "contract_hash": "contract-hash",
    "model": "model",
    "local_epochs": "local-epochs",
    "sample_rate": "sample-rate",
    "learning_rate": "learning-rate",
    "max_grad_norm": "max-grad-norm",
    "noise_multiplier": "noise-multiplier",
    "target_epsilon": "target-epsilon",
    "delta": "delta",
    "total_rounds": "total-rounds",
    "eval_noise": "eval-noise",
    "eval_bins": "eval-bins",
    "proximal_mu": "proximal-mu",
    "server_round": "server-round",
    "evaluate_incoming": "evaluate-incoming",
    "optimizer": "optimizer",
    "final_eval_noise": "final-eval-noise",
    "drift_reference_noise": "drift-reference-noise",
    "drift_bins": "drift-bins",
    "learning_rate_final": "learning-rate-final",
}
BUDGET_KEYS: Final[Mapping[str, str]] = {
    "epsilon_run": "epsilon",
    "epsilon_total": "epsilon-total",
    "epsilon_cap": "epsilon-cap",
    "epsilon_remaining": "epsilon-remaining",
    "delta": "delta",
}
RUNTIME_SOCKET: Final = "runtime"  # SuperNode --node-config key: the runtime's local socket
# The signed build's manifest, inside the FAB beside the relay (server/app_store.py writes it at
# publish; the relay forwards it as RunSettings.app_manifest / app_manifest_signature)
APP_MANIFEST_FILE: Final = "app_manifest.json"
MANIFEST, MANIFEST_SIGNATURE = "manifest", "signature"

# -- federated analytics: one query message per node (protos: QueryRequest / QueryReply) ---------
QUERY: Final = f"{MessageType.QUERY}.analytics"
QUERY_SPEC: Final = "query-spec"  # coordinator → node: the QuerySpec as protobuf JSON (CONFIG)
QUERY_VALUE_NAMES: Final = "query-value-names"  # INFO: what each cell releases
QUERY_CELL_KEYS: Final = "query-cell-keys"  # INFO: each cell's key, as a JSON list of strings
QUERY_VALUES: Final = "query-values"  # METRICS: cells × values, row-major, noised
QUERY_NOISE_STD: Final = "query-noise-std"  # METRICS: the noise std of each value
QUERY_EPSILON: Final = "query-epsilon"  # METRICS: ε of this query alone on the node
SENSITIVITY: Final = "sensitivity"  # METRICS: L2 sensitivity of the released vector
