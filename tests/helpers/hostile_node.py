"""A hostile node in a LocalFederation, and the held-out AUC of what a run published."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from atoll.federation import LocalFederation
from atoll.processes import ManagedProcess, flower_env, spawn
from client.split import split_mask
from common.contract import load_contract
from common.encoding import Encoder
from common.model import load_for, predict_logits
from server.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
HOSTILE_RUNTIME = ROOT / "tests" / "adversary" / "hostile_runtime.py"


def make_hostile(fed: LocalFederation, name: str, mode_file: Path) -> ManagedProcess:
    """Replace node `name`'s runtime (same config, ledger and socket) by the hostile one."""
    fed.processes[f"runtime:{name}"].stop()
    home = fed.workdir / "nodes" / name
    sock = home / "runtime.sock"
    mode_file.write_text("honest")
    env = {**flower_env(), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(HOSTILE_RUNTIME), "--config", str(home / "node.toml")]
    proc = spawn(
        f"hostile-{name}",
        [*argv, "--mode-file", str(mode_file)],
        fed.logs / f"hostile-{name}.log",
        env,
        cwd=ROOT,
    )
    fed.processes[f"runtime:{name}"] = proc
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.alive, proc.log_text()[-2000:]
        if sock.exists():
            with socket.socket(socket.AF_UNIX) as s:
                if s.connect_ex(str(sock)) == 0:
                    return proc
        time.sleep(0.1)
    raise TimeoutError(f"hostile runtime {name} did not listen: {proc.log_text()[-2000:]}")


def held_out_auc(registry_url: str, model_name: str, data: Path, contract_path: Path) -> float:
    """ROC AUC of the latest `model_name` on every silo's held-out rows (the nodes' own split)."""
    contract = load_contract(contract_path)
    frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    held_out = frame[split_mask(frame[contract.id].to_numpy(), test_fraction=0.2)]
    encoder = Encoder(contract)
    encoded = encoder.encode(held_out.reset_index(drop=True))
    registry = Registry(registry_url)
    try:
        stored = registry.get(model_name)
    finally:
        registry.close()
    model = load_for(stored.card.model_kind, stored.contract, stored.weights)
    scores = predict_logits(model, encoded.x)
    labels = encoder.labels(held_out.reset_index(drop=True))[encoded.keep]
    return float(roc_auc_score(labels, np.asarray(scores)))
