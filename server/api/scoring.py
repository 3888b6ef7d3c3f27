"""Scoring: check JSON records against the contract, encode them, predict, explain.

Kept free of FastAPI so it can be tested and reused (batch scoring, CLI). Problems and warnings
name the record, the field and the reason — never the submitted value, which may be personal data.

Reason codes are occlusion in logit space: a feature's contribution is logit(x) minus the logit
with that feature's encoded columns set to a neutral baseline (numeric: the contract's impute
value, else the middle of its range; categorical: no category; binary: halfway). For logistic
regression this is exactly weight x (value - baseline); for an MLP it is the same question asked
of the real model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from torch import nn

from common.contract import BinaryFeature, CategoricalFeature, Contract, NumericFeature
from common.encoding import Encoder, numeric_neutral
from common.model import predict_logits

Direction = Literal["increases", "decreases"]
_MAX_NAME_SHOWN = 64


@dataclass(frozen=True)
class RecordProblem:
    """Why one field of one record cannot be scored."""

    record: int
    field: str
    problem: str


class RecordsInvalid(ValueError):
    """At least one record breaks the contract; `problems` lists every one found."""

    def __init__(self, problems: list[RecordProblem]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the submitted records")


@dataclass(frozen=True)
class ReasonCode:
    feature: str
    contribution: float  # logit(record) - logit(record with this feature neutral)
    direction: Direction


@dataclass(frozen=True)
class Score:
    probability: float
    logit: float
    reason_codes: list[ReasonCode]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Checked:
    """A normalised field value (None = missing) or the problem that prevents it."""

    value: object = None
    problem: str | None = None
    warning: str | None = None


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "an unsupported value"


def _shown(name: str) -> str:
    return name if len(name) <= _MAX_NAME_SHOWN else name[:_MAX_NAME_SHOWN] + "..."


def _imputed(name: str) -> str:
    return f"field {name}: missing, imputed with the contract value"


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _as_token(value: object) -> str | None:
    """A string or integral number as the text the contract's vocabularies use; else None."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else str(value)
    return None


def _check_numeric(f: NumericFeature, value: object) -> _Checked:
    if _is_missing(value):
        if f.missing == "impute":
            return _Checked(None, warning=_imputed(f.name))
        return _Checked(problem="required field is missing (the contract does not impute it)")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _Checked(problem=f"expected a number, got {_json_type(value)}")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer too large for a float
        number = math.inf
    if not math.isfinite(number):
        return _Checked(problem="number is not finite (NaN or infinity); send a real number")
    if number < f.min or number > f.max:
        return _Checked(number, warning=f"field {f.name}: outside the contract range, clipped")
    return _Checked(number)


def _check_categorical(f: CategoricalFeature, value: object) -> _Checked:
    if _is_missing(value):
        if f.missing == "other":
            return _Checked(None, warning=f"field {f.name}: missing, mapped to other")
        return _Checked(problem="required field is missing (the contract rejects missing values)")
    token = _as_token(value)
    if token is None:
        return _Checked(problem=f"expected a string, got {_json_type(value)}")
    if token not in f.vocabulary:
        return _Checked(token, warning=f"field {f.name}: unknown category mapped to other")
    return _Checked(token)


def _check_binary(f: BinaryFeature, value: object) -> _Checked:
    if _is_missing(value):
        if f.missing == "impute":
            return _Checked(None, warning=_imputed(f.name))
        return _Checked(problem="required field is missing (the contract does not impute it)")
    if isinstance(value, bool):
        return _Checked(f.true_values[0] if value else f.false_values[0])
    token = _as_token(value)
    if token is None:
        return _Checked(problem=f"expected true/false or a string, got {_json_type(value)}")
    if token not in f.true_values and token not in f.false_values:
        allowed = ", ".join(f.true_values + f.false_values)
        return _Checked(problem=f"not one of the contract's true/false values ({allowed})")
    return _Checked(token)


def _check(feature: NumericFeature | CategoricalFeature | BinaryFeature, value: object) -> _Checked:
    if isinstance(feature, NumericFeature):
        return _check_numeric(feature, value)
    if isinstance(feature, CategoricalFeature):
        return _check_categorical(feature, value)
    return _check_binary(feature, value)


def prepare_records(
    contract: Contract, records: Sequence[Mapping[str, Any]]
) -> tuple[pd.DataFrame, list[list[str]]]:
    """Validate records into a frame the encoder accepts, plus per-record warnings.

    The id, label and dropped columns may be present (a client may send whole rows); they are
    ignored. Raises RecordsInvalid listing every problem in the batch.
    """
    features = contract.features
    ignored = {contract.id, contract.label.column, *contract.drop}
    known = set(contract.feature_names)
    problems: list[RecordProblem] = []
    warnings: list[list[str]] = []
    columns: dict[str, list[object]] = {f.name: [] for f in features}
    for i, record in enumerate(records):
        notes: list[str] = []
        for key in record:
            if key not in known and key not in ignored:
                problem = f"unknown field '{_shown(key)}' — not in contract {contract.name}"
                problems.append(RecordProblem(i, _shown(key), problem))
        for f in features:
            checked = _check(f, record.get(f.name))
            if checked.problem is not None:
                problems.append(RecordProblem(i, f.name, checked.problem))
            if checked.warning is not None:
                notes.append(checked.warning)
            columns[f.name].append(checked.value)
        warnings.append(notes)
    if problems:
        raise RecordsInvalid(problems)
    return pd.DataFrame(columns, dtype=object), warnings


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
    """Logits [n] and per-feature contributions [n, n_contract_features], one pass per feature."""
    logits = predict_logits(model, x).astype(np.float64)
    names = encoder.contract.feature_names
    contributions = np.empty((x.shape[0], len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        cols = encoder.groups[name]
        occluded = x.copy()
        occluded[:, cols] = baseline[cols]
        contributions[:, j] = logits - predict_logits(model, occluded)
    return logits, contributions


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


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


class Scorer:
    """One served model: its contract, encoder, torch module and occlusion baseline."""

    def __init__(self, contract: Contract, model: nn.Module) -> None:
        self.contract = contract
        self.encoder = Encoder(contract)
        self.model = model
        self.baseline = neutral_baseline(self.encoder)

    def score(self, records: Sequence[Mapping[str, Any]], top_k: int = 3) -> list[Score]:
        """Probability, reason codes and warnings per record; RecordsInvalid on contract errors."""
        frame, warnings = prepare_records(self.contract, records)
        encoded = self.encoder.encode(frame)
        if encoded.row_errors:  # prepare_records should have caught these; never score partially
            raise RecordsInvalid(
                [
                    RecordProblem(i, feature, f"cannot be encoded ({reason})")
                    for i, errs in sorted(encoded.row_errors.items())
                    for feature, reason in errs
                ]
            )
        logits, contributions = occlusion(self.model, encoded.x, self.encoder, self.baseline)
        reasons = top_reason_codes(contributions, self.contract.feature_names, top_k)
        probs = _sigmoid(logits)
        return [
            Score(probability=float(p), logit=float(z), reason_codes=r, warnings=w)
            for p, z, r, w in zip(probs, logits, reasons, warnings, strict=True)
        ]
