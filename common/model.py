"""The model family every node trains and the API serves, and its portable weight format."""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn

# the names are defined with the run config (light: no torch); imported here for this module's users
from common.run_config import MODEL_KINDS as MODEL_KINDS
from common.run_config import ModelKind as ModelKind


def build_model(kind: str, n_features: int, hidden: int = 32) -> nn.Module:
    """A model that outputs one logit per record. Only Opacus-compatible layers."""
    if kind == "logreg":
        return nn.Sequential(nn.Linear(n_features, 1))
    if kind == "mlp":
        return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    raise ValueError(f"unknown model kind '{kind}': use one of {', '.join(MODEL_KINDS)}")


def weights_to_bytes(state: dict[str, torch.Tensor] | dict[str, np.ndarray]) -> bytes:
    """Serialize weights as .npz (no pickle: safe to load from the registry)."""
    buf = io.BytesIO()
    arrays = {
        k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
        for k, v in state.items()
    }
    # allow_pickle spelled out (numpy's default) so no weight name can be taken for the flag
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def weights_from_bytes(blob: bytes) -> dict[str, torch.Tensor]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return {k: torch.from_numpy(npz[k].copy()) for k in npz.files}


def load_model(kind: str, n_features: int, blob: bytes) -> nn.Module:
    model = build_model(kind, n_features)
    model.load_state_dict(weights_from_bytes(blob))
    model.eval()
    return model


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).squeeze(-1).numpy()
