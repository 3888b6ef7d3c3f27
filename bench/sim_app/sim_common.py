"""Shared by the simulation ServerApp and ClientApp: the contract and synthetic partitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import common
from common.contract import Contract, load_contract
from common.encoding import Encoder
from common.synth import generate

CONTRACT_PATH = Path(common.__file__).resolve().parents[1] / "contracts" / "synthetic.yaml"


def contract() -> Contract:
    return load_contract(CONTRACT_PATH)


def partition(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoded features and labels of one node's synthetic rows (one department, clean)."""
    frame = generate(rows, seed=seed, departments=1, dirty=False)
    enc = Encoder(contract())
    encoded = enc.encode(frame)
    return encoded.x, enc.labels(frame)[encoded.keep]
