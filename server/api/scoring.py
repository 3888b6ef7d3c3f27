"""Scoring: check JSON records against the contract, encode them, predict, explain.

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

import math
from collections.abc import Callable, Mapping, Sequence
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


_SLOW = object()  # a fast check's "not the common case": ask the full check
_Fast = Callable[[list[object]], list[object]]


def _fast_check(feature: NumericFeature | CategoricalFeature | BinaryFeature) -> _Fast:
    """The common valid case of `_check`, for a whole column at once: the normalised value it
    would give (with no warning) per cell, or _SLOW for anything else (missing, out of range,
    wrong type, padded text, ...). Blank spellings are left to `_check`: blank means missing."""
    if isinstance(feature, NumericFeature):
        lo, hi = feature.min, feature.max

        def numeric(col: list[object]) -> list[object]:
            return [
                v
                if type(v) is float and lo <= v <= hi
                else float(v)
                if type(v) is int and lo <= v <= hi
                else _SLOW
                for v in col
            ]

        return numeric
    if isinstance(feature, CategoricalFeature):
        vocabulary = frozenset(v for v in feature.vocabulary if v and v == v.strip())

        def categorical(col: list[object]) -> list[object]:
            return [v if type(v) is str and v in vocabulary else _SLOW for v in col]

        return categorical
    spelled = frozenset(
        v for v in feature.true_values + feature.false_values if v and v == v.strip()
    )
    true, false = feature.true_values[0], feature.false_values[0]

    def binary(col: list[object]) -> list[object]:
        return [
            v
            if type(v) is str and v in spelled
            else true
            if v is True
            else false
            if v is False
            else _SLOW
            for v in col
        ]

    return binary


class RecordChecker:
    """Validates JSON records against one contract into per-feature columns of normalised values
    (what `Encoder.encode_columns` takes), plus per-record warnings. Built once per served model.

    The id, label and dropped columns may be present (a client may send whole rows); they are
    ignored. `check` raises RecordsInvalid listing every problem in the batch, record by record
    (unknown fields first, then the contract's features in order), as the field-by-field check
    does: the common valid values are recognised a column at a time, the rest checked one by one.
    """

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.allowed = frozenset(
            [*contract.feature_names, contract.id, contract.label.column, *contract.drop]
        )
        self._features = [(f, f.name, _fast_check(f)) for f in contract.features]

    def check(
        self, records: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, list[object]], list[list[str]]]:
        contract, allowed = self.contract, self.allowed
        unknown: dict[int, list[RecordProblem]] = {}
        for i, record in enumerate(records):
            if not record.keys() <= allowed:
                unknown[i] = [
                    RecordProblem(
                        i,
                        _shown(key),
                        f"unknown field '{_shown(key)}' — not in contract {contract.name}",
                    )
                    for key in record
                    if key not in allowed
                ]
        found: dict[int, list[RecordProblem]] = {}  # per record, in feature order
        notes: dict[int, list[str]] = {}
        columns: dict[str, list[object]] = {}
        for f, name, fast in self._features:
            raw = [record.get(name) for record in records]
            col = fast(raw)
            if _SLOW in col:
                for i, value in enumerate(col):
                    if value is _SLOW:
                        checked = _check(f, raw[i])
                        if checked.problem is not None:
                            found.setdefault(i, []).append(RecordProblem(i, name, checked.problem))
                        if checked.warning is not None:
                            notes.setdefault(i, []).append(checked.warning)
                        col[i] = checked.value
            columns[name] = col
        if unknown or found:
            raise RecordsInvalid(
                [
                    problem
                    for i in sorted(unknown.keys() | found.keys())
                    for problem in unknown.get(i, []) + found.get(i, [])
                ]
            )
        return columns, [notes.get(i, []) for i in range(len(records))]


def prepare_records(
    contract: Contract, records: Sequence[Mapping[str, Any]]
) -> tuple[pd.DataFrame, list[list[str]]]:
    """Validate records into a frame the encoder accepts, plus per-record warnings.

    The id, label and dropped columns may be present (a client may send whole rows); they are
    ignored. Raises RecordsInvalid listing every problem in the batch. (The API itself uses
    `RecordChecker` and `Encoder.encode_columns`, which skip the frame.)
    """
    columns, warnings = RecordChecker(contract).check(records)
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
