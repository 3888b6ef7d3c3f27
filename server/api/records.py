"""Check JSON records against the contract, field by field, before anything is encoded.

Kept free of FastAPI so it can be tested and reused (batch scoring, CLI). Problems and warnings
name the record, the field and the reason — never the submitted value, which may be personal data.
`RecordChecker` is the fast path the API uses (one pass per feature over a column, the full check
only for uncommon values); `prepare_records` gives the same as a DataFrame.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from common.contract import BinaryFeature, CategoricalFeature, Contract, NumericFeature

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
