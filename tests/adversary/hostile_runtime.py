"""A hostile (or broken) node: the real node runtime, whose train replies are then corrupted.

    python tests/adversary/hostile_runtime.py --config node.toml --mode-file mode.txt

The node is a real participant — admitted, charged, trained with DP-SGD on its own data —
but before its weights leave, they are replaced according to the word in `--mode-file` (read at
every train request, so one federation can run clean and hostile runs in turn):

- `honest`: unchanged;
- `nan`: every weight NaN (a broken node);
- `scale`: the update (weights − incoming global weights) × 100 (a model-replacement attack);
- `flip`: the update × −1 (a sign-flipping attack).

Used by tests/test_faults_nodes.py and bench/robustness.py; the coordinator must drop the NaN
node and bound the others (server/replies.py, server/strategies.py).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

import numpy as np

from client.runtime import grpc_server
from client.runtime.config import NodeConfig
from client.runtime.service import NodeService
from common import wire
from common.protos.atoll.node.v1 import runtime_pb2 as pb

FACTORS = {"scale": 100.0, "flip": -1.0}
MODES = ("honest", "nan", *FACTORS)


def corrupt(trained: pb.Trained, incoming: pb.Weights, mode: str) -> None:
    """Replace `trained.weights` in place as `mode` says."""
    if mode == "honest":
        return
    start = {t.name: wire.tensor_values(t) for t in incoming.tensors}
    tensors = []
    for t in trained.weights.tensors:
        values = wire.tensor_values(t)
        if mode == "nan":
            out = np.full_like(values, np.nan)
        else:
            base = start.get(t.name, np.zeros_like(values))
            out = base + FACTORS[mode] * (values - base)
        tensors.append(wire.tensor_of(t.name, out))
    trained.weights.CopyFrom(pb.Weights(tensors=tensors))


class HostileService(NodeService):
    def __init__(self, config: NodeConfig, mode_file: Path) -> None:
        super().__init__(config)
        self.mode_file = mode_file

    def mode(self) -> str:
        try:
            word = self.mode_file.read_text().strip()
        except OSError:
            return "honest"
        return word if word in MODES else "honest"

    def train(self, req: pb.TrainRequest) -> pb.TrainReply:
        reply = super().train(req)
        if reply.WhichOneof("outcome") == "trained":
            corrupt(reply.trained, req.weights, self.mode())
        return reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--mode-file", type=Path, required=True)
    args = parser.parse_args()
    config = NodeConfig.load(args.config)
    server = grpc_server.start(config, HostileService(config, args.mode_file))
    print(f"ATOLL hostile runtime ready node={config.name}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()


if __name__ == "__main__":
    main()
