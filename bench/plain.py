"""Non-private training with the same model and hyperparameters as `client.training.train_dp`.

Plain mini-batch training (shuffled batches of the DP run's expected batch size, no clipping, no
noise) with the DP run's update rule (`cfg.optimizer`: Adam or SGD, a fresh optimizer per call as
`train_dp` restarts its moments every round) on the model from `common.model.build_model`: the
non-DP reference for federated, local-only and centralized runs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.dp import plain_batch_size
from client.training import DPTrainConfig
from common.model import predict_logits


def train_plain(
    model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: DPTrainConfig, seed: int
) -> float:
    """`cfg.epochs` epochs of non-private training in place (shuffle seeded); returns the mean
    loss."""
    if len(x) == 0:
        raise ValueError("no training rows")
    torch.manual_seed(seed)
    data = TensorDataset(
        torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
    )
    loader = DataLoader(data, batch_size=plain_batch_size(cfg, len(x)), shuffle=True)
    optimizer: torch.optim.Optimizer = (
        torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
        if cfg.optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=cfg.learning_rate)
    )
    criterion = nn.BCEWithLogitsLoss()
    model.train()
    losses: list[float] = []
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = criterion(model(xb).squeeze(-1), yb)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else math.nan


def predict_proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """P(positive) per row, as the scoring API computes it."""
    logits = predict_logits(model, x).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-logits))
