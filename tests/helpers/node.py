"""Factories for node-side tests: an owner's node config and ledger, and coordinator requests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from client.runtime.config import NodeConfig
from common import wire
from common.contract import load_contract
from common.model import model_for
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from privacy.ledger import Ledger, Policy

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC_CONTRACT = ROOT / "contracts" / "synthetic.yaml"


def node_config(
    tmp: Path,
    data: Path | str,
    *,
    name: str = "dept-a",
    contract: Path = SYNTHETIC_CONTRACT,
    policy: Policy | None = None,
    size_bucket: str = "",
    checkpoint_dir: Path | None = None,
    **data_keys: object,
) -> NodeConfig:
    """A node as its owner sets it up: node config plus an initialised ledger (unless policy
    is None and `tmp/state` already holds one)."""
    state = tmp / "state"
    if policy is not None or not (state / "ledger.anchor.json").exists():
        Ledger.initialize(state, name, policy or Policy(cap_epsilon=10.0, delta=1e-5)).close_db()
    return NodeConfig.model_validate(
        {
            "name": name,
            "contract": str(contract),
            "state-dir": str(state),
            "socket": str(tmp / "runtime.sock"),
            "size-bucket": size_bucket,
            "checkpoint-dir": str(checkpoint_dir) if checkpoint_dir else None,
            "data": {"source": str(data), **data_keys},
        }
    )


def settings(contract: Path = SYNTHETIC_CONTRACT, **overrides: object) -> pb.RunSettings:
    """What a well-behaved coordinator asks (override any field by its proto name)."""
    base: dict[str, object] = {
        "contract_hash": load_contract(contract).hash,
        "model": "logreg",
        "local_epochs": 1,
        "sample_rate": 0.05,
        "learning_rate": 0.5,
        "learning_rate_final": 1.0,
        "max_grad_norm": 1.0,
        "noise_multiplier": 1.0,
        "target_epsilon": 0.0,
        "delta": 1e-5,
        "total_rounds": 2,
        "eval_noise": 10.0,
        "eval_bins": 20,
        "proximal_mu": 0.0,
        "server_round": 1,
        "optimizer": "adam",
    }
    base.update(overrides)
    return pb.RunSettings(**base)  # type: ignore[arg-type]


def weights(contract: Path = SYNTHETIC_CONTRACT, model: str = "logreg") -> pb.Weights:
    module = model_for(model, load_contract(contract))
    return pb.Weights(
        tensors=[wire.tensor_of(k, v.detach().numpy()) for k, v in module.state_dict().items()]
    )


def caller(run_id: str = "101", message_id: str = "m1") -> pb.Caller:
    return pb.Caller(run_id=run_id, node_id=7, message_id=message_id)


T = TypeVar("T")


def without_blocking(fn: Callable[[], T], timeout: float = 120) -> T:
    """Run `fn` in a thread: if it opens a FIFO data source it blocks and the test fails."""
    box: dict[str, object] = {}
    thread = threading.Thread(target=lambda: box.update(reply=fn()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the runtime blocked: it opened the data source"
    return box["reply"]  # type: ignore[return-value]
