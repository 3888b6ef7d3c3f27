"""The model family every node trains and the API serves, and its portable weight format.

Kinds (`BUILD_KINDS`): `logreg` (one linear layer on the encoding), `mlp` (one hidden layer) and
`additive`: a linear layer on a fixed, public piecewise-linear basis of every numeric feature — a
GAM-like model that can bend each numeric effect (e.g. churn falling steeply with tenure, then
flattening; a U in age) and is still additive per contract feature. The basis stage has no
parameters: its knots are spaced uniformly over each numeric feature's *encoded contract bounds*
(`BasisLayout`, `basis_layout(encoder)`), never estimated from data, so it is the same on every
node and in the API, and its weights (`1.weight`, `1.bias`) travel, aggregate, calibrate and store
exactly like a logistic regression's with more inputs. Only standard `nn.Linear` layers train
(Opacus computes their per-sample gradients).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

from common.contract import Contract, NumericFeature
from common.encoding import Encoder

# the names are defined with the run config (light: no torch); imported here for this module's users
from common.run_config import MODEL_KINDS as MODEL_KINDS
from common.run_config import ModelKind as ModelKind

ADDITIVE = "additive"
# every kind build_model knows: a run (RunConfig) and the registry accept MODEL_KINDS only, so
# "additive" is usable in a run once common.run_config's ModelKind lists it
BUILD_KINDS: tuple[str, ...] = tuple(dict.fromkeys((*MODEL_KINDS, ADDITIVE)))
# interior knots per numeric feature of the additive model (K + 1 linear pieces between the
# encoded bounds) and the basis spelling: evidence in bench/results/quality_basis.md. Changing
# either changes the weights' shape or meaning: models published with other values no longer load
# (shape error) or score differently, so a change needs a new model kind.
ADDITIVE_KNOTS = 6
BasisKind = Literal["hat", "hinge", "ramp"]
BASIS_KINDS: tuple[str, ...] = get_args(BasisKind)
ADDITIVE_BASIS: BasisKind = "ramp"


@dataclass(frozen=True)
class BasisLayout:
    """Where the additive model's fixed basis goes: a function of the contract alone.

    `columns`: the encoded column of each numeric feature (ascending); `lo`/`hi`: its encoded
    bounds (the contract's min and max through clip → transform → scale); `knots`: interior knots
    per feature, spaced uniformly in [lo, hi]; `basis`: how the piecewise-linear functions with
    those knots are spelled (`PiecewiseLinearBasis`). Every other column passes through unchanged.
    """

    n_features: int
    columns: tuple[int, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    knots: int = ADDITIVE_KNOTS
    basis: BasisKind = ADDITIVE_BASIS

    def __post_init__(self) -> None:
        if not len(self.columns) == len(self.lo) == len(self.hi):
            raise ValueError("basis layout: columns, lo and hi must have the same length")
        if len(set(self.columns)) != len(self.columns) or any(
            not 0 <= c < self.n_features for c in self.columns
        ):
            raise ValueError(
                f"basis layout: columns {list(self.columns)} must be distinct indices of the "
                f"{self.n_features} encoded columns"
            )
        if any(
            not (math.isfinite(a) and math.isfinite(b) and b > a)
            for a, b in zip(self.lo, self.hi, strict=True)
        ):
            raise ValueError("basis layout: every column needs finite bounds with hi > lo")
        if self.knots < 0:
            raise ValueError(f"basis layout: knots must be ≥ 0, got {self.knots}")
        if self.basis not in BASIS_KINDS:
            raise ValueError(f"basis layout: basis must be one of {', '.join(BASIS_KINDS)}")

    @property
    def per_column(self) -> int:
        """Basis functions per numeric column (hat: K + 2 replacing x; ramp: K + 1 replacing x;
        hinge: K beside x)."""
        return {"hat": self.knots + 2, "ramp": self.knots + 1, "hinge": self.knots}[self.basis]

    @property
    def n_outputs(self) -> int:
        """Width of the expanded input: pass-through columns + the numeric columns' bases."""
        kept = self.n_features if self.basis == "hinge" else self.n_features - len(self.columns)
        return kept + len(self.columns) * self.per_column

    def knot_grid(self) -> np.ndarray:
        """[numeric columns, knots + 2]: both bounds and the interior knots, float64."""
        return np.array(
            [np.linspace(a, b, self.knots + 2) for a, b in zip(self.lo, self.hi, strict=True)],
            dtype=np.float64,
        ).reshape(len(self.columns), self.knots + 2)


def basis_layout(
    encoder: Encoder, knots: int = ADDITIVE_KNOTS, basis: BasisKind = ADDITIVE_BASIS
) -> BasisLayout:
    """The additive model's basis for a contract's encoding: its numeric features' columns and
    encoded bounds. Depends on the contract only (never on data)."""
    columns, lo, hi = [], [], []
    for f in encoder.contract.features:
        if isinstance(f, NumericFeature):
            a, b = f.encoded_bounds
            columns.append(encoder.groups[f.name][0])
            lo.append(float(a))
            hi.append(float(b))
    return BasisLayout(encoder.n_features, tuple(columns), tuple(lo), tuple(hi), knots, basis)


class PiecewiseLinearBasis(nn.Module):
    """Fixed (no parameters): each numeric column → a basis of the continuous functions that are
    linear between its uniform knots t_0 = lo < t_1 < … < t_{K+1} = hi (spacing h).

    x is first clamped into [lo, hi] as the encoder clamps raw values. Spellings of that span
    (with the linear layer's bias each spans it exactly, x included):

    - `hat`: the K + 2 linear B-splines max(0, 1 − |x − t_j| / h), replacing x; they sum to 1 and
      x = Σ t_j hat_j; a function's weights are its values at the knots;
    - `ramp`: the K + 1 segment ramps clamp((x − t_j) / h, 0, 1), j = 0..K, replacing x
      (x = lo + h Σ ramp_j); a weight is the function's rise over one segment;
    - `hinge`: x kept, plus K hinges max(0, x − t_j) / (hi − lo) at the interior knots; a weight
      is the change of slope at a knot.

    Output: the pass-through columns (every column for `hinge`, else the non-numeric ones, in
    order), then each numeric column's basis. Buffers are not persistent: the weights' state holds
    only the linear layer.
    """

    passthrough: torch.Tensor
    columns: torch.Tensor
    offsets: torch.Tensor
    width: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    def __init__(self, layout: BasisLayout) -> None:
        super().__init__()
        numeric = set(layout.columns)
        passthrough = [
            j for j in range(layout.n_features) if layout.basis == "hinge" or j not in numeric
        ]
        grid = layout.knot_grid()
        offsets = {"hat": grid, "ramp": grid[:, :-1], "hinge": grid[:, 1:-1]}[layout.basis]
        width = (np.asarray(layout.hi) - np.asarray(layout.lo)) / (
            1.0 if layout.basis == "hinge" else layout.knots + 1
        )
        self.basis = layout.basis
        self.register_buffer("passthrough", torch.tensor(passthrough, dtype=torch.long), False)
        self.register_buffer("columns", torch.tensor(layout.columns, dtype=torch.long), False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.float32), False)
        self.register_buffer("width", torch.tensor(width, dtype=torch.float32)[:, None], False)
        self.register_buffer("lo", torch.tensor(layout.lo, dtype=torch.float32), False)
        self.register_buffer("hi", torch.tensor(layout.hi, dtype=torch.float32), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = torch.minimum(torch.maximum(x[:, self.columns], self.lo), self.hi)  # [n, m]
        x = x.index_copy(1, self.columns, v)  # hinge keeps x: the clamped x
        u = (v.unsqueeze(-1) - self.offsets) / self.width  # [n, m, per column]
        if self.basis == "hat":
            b = torch.clamp(1.0 - u.abs(), min=0.0)
        elif self.basis == "ramp":
            b = torch.clamp(u, 0.0, 1.0)
        else:
            b = torch.clamp(u, min=0.0)
        return torch.cat([x[:, self.passthrough], b.flatten(1)], dim=1)


def build_model(
    kind: str, n_features: int, hidden: int = 32, *, layout: BasisLayout | None = None
) -> nn.Module:
    """A model that outputs one logit per record. Only Opacus-compatible trainable layers.

    `layout` (from `basis_layout(Encoder(contract))`) is required for `additive` and ignored by
    the other kinds, so a caller that has the contract can always pass it.
    """
    if kind == "logreg":
        return nn.Sequential(nn.Linear(n_features, 1))
    if kind == "mlp":
        return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    if kind == ADDITIVE:
        if layout is None:
            raise ValueError(
                "model kind 'additive' needs the contract's basis: pass "
                "layout=common.model.basis_layout(Encoder(contract))"
            )
        if layout.n_features != n_features:
            raise ValueError(
                f"basis layout is for {layout.n_features} encoded columns, the model has "
                f"{n_features}: build both from the same contract"
            )
        return nn.Sequential(PiecewiseLinearBasis(layout), nn.Linear(layout.n_outputs, 1))
    raise ValueError(f"unknown model kind '{kind}': use one of {', '.join(BUILD_KINDS)}")


def model_for(kind: str, contract: Contract) -> nn.Module:
    """A fresh model of `kind` for `contract`'s encoding (with its basis, for `additive`)."""
    encoder = Encoder(contract)
    return build_model(kind, encoder.n_features, layout=basis_layout(encoder))


def load_for(kind: str, contract: Contract, blob: bytes) -> nn.Module:
    """Weights `blob` loaded into a model of `kind` for `contract` (eval mode)."""
    encoder = Encoder(contract)
    return load_model(kind, encoder.n_features, blob, layout=basis_layout(encoder))


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


def load_model(
    kind: str, n_features: int, blob: bytes, *, layout: BasisLayout | None = None
) -> nn.Module:
    model = build_model(kind, n_features, layout=layout)
    model.load_state_dict(weights_from_bytes(blob))
    model.eval()
    return model


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).squeeze(-1).numpy()
