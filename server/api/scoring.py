"""Scoring: checked records → encoding → prediction → reason codes (`Scorer`).

Kept free of FastAPI so it can be tested and reused (batch scoring, CLI). Problems and warnings
name the record, the field and the reason — never the submitted value, which may be personal data.

Reason codes are occlusion in logit space: a feature's contribution is logit(x) minus the logit
with that feature's encoded columns set to a neutral baseline (numeric: the contract's impute
value, else the middle of its range; categorical: no category; binary: halfway). For logistic
regression this is exactly weight x (value - baseline) summed over the feature's columns, and
`LinearExplainer` computes it so, in float64, without a forward pass; for an MLP
`batched_occlusion` asks the real model, all occluded copies in one forward pass.

Records are encoded with `Encoder.encode_records` (no DataFrame): identical to `Encoder.encode`
over a frame (tests/test_serving_encoding.py), several times cheaper for a handful of records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from common.contract import Contract
from common.encoding import Encoder
from server.api.explain import (
    LinearExplainer,
    ReasonCode,
    batched_occlusion,
    neutral_baseline,
    top_reason_codes,
)
from server.api.records import RecordChecker, RecordProblem, RecordsInvalid


@dataclass(frozen=True)
class Score:
    probability: float
    logit: float
    reason_codes: list[ReasonCode]
    warnings: list[str] = field(default_factory=list)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


@dataclass(frozen=True)
class Evaluated:
    """A batch of records scored: arrays, before they become reason codes."""

    probabilities: np.ndarray  # [n]
    logits: np.ndarray  # [n]
    contributions: np.ndarray  # [n, n_contract_features]
    warnings: list[list[str]]


class Scorer:
    """One served model: its contract, checker, encoder, torch module and explainer."""

    # A batch up to this many records × features is scored on the event loop (cheaper than a
    # thread hop); larger batches and models without an exact explainer go to a worker thread.
    INLINE_CELLS = 4000

    def __init__(self, contract: Contract, model: nn.Module) -> None:
        self.contract = contract
        self.encoder = Encoder(contract)
        self.model = model
        self.baseline = neutral_baseline(self.encoder)
        self.checker = RecordChecker(contract)
        self.linear = LinearExplainer.of(model, self.encoder, self.baseline)
        self.names = contract.feature_names

    def inline(self, n_records: int) -> bool:
        """Whether scoring `n_records` is cheap enough to run on the event loop."""
        return self.linear is not None and n_records * len(self.names) <= self.INLINE_CELLS

    def explain(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and occlusion contributions of encoded records (exact for a linear model)."""
        if self.linear is not None:
            return self.linear.explain(x)
        return batched_occlusion(self.model, x, self.encoder, self.baseline)

    def evaluate(self, records: Sequence[Mapping[str, Any]]) -> Evaluated:
        """Check, encode and explain; RecordsInvalid on contract errors."""
        columns, warnings = self.checker.check(records)
        encoded = self.encoder.encode_columns(columns, len(records))
        if encoded.row_errors:  # the checker should have caught these; never score partially
            raise RecordsInvalid(
                [
                    RecordProblem(i, feature, f"cannot be encoded ({reason})")
                    for i, errs in sorted(encoded.row_errors.items())
                    for feature, reason in errs
                ]
            )
        logits, contributions = self.explain(encoded.x)
        return Evaluated(_sigmoid(logits), logits, contributions, warnings)

    def score(self, records: Sequence[Mapping[str, Any]], top_k: int = 3) -> list[Score]:
        """Probability, reason codes and warnings per record; RecordsInvalid on contract errors."""
        out = self.evaluate(records)
        reasons = top_reason_codes(out.contributions, self.names, top_k)
        return [
            Score(probability=float(p), logit=float(z), reason_codes=r, warnings=w)
            for p, z, r, w in zip(out.probabilities, out.logits, reasons, out.warnings, strict=True)
        ]

    def predictions(
        self, records: Sequence[Mapping[str, Any]], top_k: int = 3
    ) -> list[dict[str, Any]]:
        """`score` as the JSON the API returns (`schemas.Prediction`), built without models."""
        out = self.evaluate(records)
        names = self.names
        k = max(0, min(top_k, len(names)))
        order = np.argsort(-np.abs(out.contributions), axis=1, kind="stable")[:, :k]
        chosen = np.take_along_axis(out.contributions, order, axis=1).tolist()
        return [
            {
                "probability": p,
                "reason_codes": [
                    {
                        "feature": names[j],
                        "contribution": c,
                        "direction": "increases" if c > 0 else "decreases",
                    }
                    for j, c in zip(idx, vals, strict=True)
                ],
                "warnings": w,
            }
            for p, idx, vals, w in zip(
                out.probabilities.tolist(), order.tolist(), chosen, out.warnings, strict=True
            )
        ]
