"""Reason codes: occlusion in logit space.

A feature's contribution is logit(x) minus the logit with that feature's encoded columns set to a
neutral baseline (numeric: the contract's impute value, else the middle of its range; categorical:
no category; binary: halfway). For logistic regression this is exactly weight x (value - baseline)
summed over the feature's columns, and `LinearExplainer` computes it so, in float64, without a
forward pass; for an MLP `batched_occlusion` asks the real model, all occluded copies in one
forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from torch import nn

from common.contract import BinaryFeature, NumericFeature
from common.encoding import Encoder, numeric_neutral
from common.model import predict_logits

Direction = Literal["increases", "decreases"]


@dataclass(frozen=True)
class ReasonCode:
    feature: str
    contribution: float  # logit(record) - logit(record with this feature neutral)
    direction: Direction


def neutral_baseline(encoder: Encoder) -> np.ndarray:
    """The encoded "no information" value of each column, used to occlude one feature."""
    base = np.zeros(encoder.n_features, dtype=np.float32)
    for f in encoder.contract.features:
        cols = encoder.groups[f.name]
        if isinstance(f, NumericFeature):
            base[cols[0]] = numeric_neutral(f)  # in the encoded (transformed) space
        elif isinstance(f, BinaryFeature):
            base[cols[0]] = 0.5
        # categorical: all-zero one-hot, already zero
    return base


def occlusion(
    model: nn.Module, x: np.ndarray, encoder: Encoder, baseline: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Logits [n] and per-feature contributions [n, n_contract_features], one pass per feature.

    The reference definition; the API computes the same with `LinearExplainer` (logistic
    regression, exact) or `batched_occlusion` (any model, one pass)."""
    logits = predict_logits(model, x).astype(np.float64)
    names = encoder.contract.feature_names
    contributions = np.empty((x.shape[0], len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        cols = encoder.groups[name]
        occluded = x.copy()
        occluded[:, cols] = baseline[cols]
        contributions[:, j] = logits - predict_logits(model, occluded)
    return logits, contributions


def batched_occlusion(
    model: nn.Module, x: np.ndarray, encoder: Encoder, baseline: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`occlusion` with the record and all its occluded copies in ONE forward pass.

    Row block 0 is `x`, block j+1 is `x` with feature j's columns at the baseline; the results
    equal `occlusion`'s up to float32 summation order inside the model (~1e-7).
    """
    n, d = x.shape
    names = encoder.contract.feature_names
    stacked = np.empty((len(names) + 1, n, d), dtype=np.float32)
    stacked[:] = x
    for j, name in enumerate(names):
        cols = encoder.groups[name]  # contiguous, ascending
        stacked[j + 1, :, cols[0] : cols[-1] + 1] = baseline[cols[0] : cols[-1] + 1]
    out = predict_logits(model, stacked.reshape(-1, d)).astype(np.float64).reshape(-1, n)
    logits = out[0]
    return logits, (logits[None, :] - out[1:]).T


class LinearExplainer:
    """Exact reason codes of a linear logit (logistic regression): logit = x·w + b, and
    feature j's occlusion contribution = Σ over its columns of w_c (x_c − baseline_c).

    Computed in float64 from the float32 encoding and weights: no forward pass, no copies. Equal
    to `occlusion` within its float32 rounding (tests/test_serving_scoring.py: 1e-6).
    """

    def __init__(
        self, weight: np.ndarray, bias: float, encoder: Encoder, baseline: np.ndarray
    ) -> None:
        self.weight = np.asarray(weight, dtype=np.float64).reshape(-1)
        if self.weight.shape != (encoder.n_features,):
            raise ValueError(
                f"linear weight has {self.weight.size} inputs, the encoding {encoder.n_features}"
            )
        self.bias = float(bias)
        self.baseline = np.asarray(baseline, dtype=np.float64)
        self.starts = np.array(
            [encoder.groups[name][0] for name in encoder.contract.feature_names], dtype=np.intp
        )

    @classmethod
    def of(cls, model: nn.Module, encoder: Encoder, baseline: np.ndarray) -> LinearExplainer | None:
        """The explainer of `model` if it is one linear layer with one output, else None."""
        layers = list(model.children()) if isinstance(model, nn.Sequential) else [model]
        if len(layers) != 1 or not isinstance(layers[0], nn.Linear):
            return None
        layer = layers[0]
        if layer.out_features != 1:
            return None
        weight = layer.weight.detach().cpu().numpy().astype(np.float64)
        bias = float(layer.bias.detach().cpu().numpy()[0]) if layer.bias is not None else 0.0
        return cls(weight, bias, encoder, baseline)

    def explain(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits [n] and contributions [n, n_contract_features], float64."""
        xd = x.astype(np.float64)
        logits = xd @ self.weight + self.bias
        terms = (xd - self.baseline) * self.weight
        return logits, np.add.reduceat(terms, self.starts, axis=1)


def top_reason_codes(
    contributions: np.ndarray, names: list[str], top_k: int
) -> list[list[ReasonCode]]:
    """The `top_k` largest |contribution| per record, ties kept in contract order."""
    k = max(0, min(top_k, len(names)))
    order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :k]
    return [
        [
            ReasonCode(
                feature=names[j],
                contribution=float(row[j]),
                direction="increases" if row[j] > 0 else "decreases",
            )
            for j in idx
        ]
        for row, idx in zip(contributions, order, strict=True)
    ]
