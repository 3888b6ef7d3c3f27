"""The data contract: the one schema every node, the coordinator and the scoring API agree on.

A contract is a YAML file. It names the label and its positive value, the id column (never a
feature), columns to drop (PII, leaky columns) and every feature with the fixed, agreed parameters
its encoding needs (numeric range and optional transform/standardisation, categorical vocabulary,
binary truth values, missing policy). Encoding depends only on the contract — never on a node's
data — so it is identical everywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from common.errors import AtollError


class ContractError(AtollError, ValueError):
    """A contract file is unreadable or inconsistent; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Label(_Strict):
    column: str = Field(min_length=1)
    positive: str = Field(
        min_length=1, description="Value of `column` that means the positive class."
    )


# Numeric transforms the federation may agree on, applied after clipping to [min, max].
NUMERIC_TRANSFORMS = ("log1p",)
# |encoded value| beyond this means center/scale were not given in the transformed space.
MAX_ENCODED_MAGNITUDE = 1e6
# Optional numeric keys left out of every dump when unset, so that a contract without transforms
# dumps (and hashes) exactly as it did before transforms existed.
_OPTIONAL_NUMERIC_KEYS = ("transform", "center", "scale")


def apply_transform(transform: str | None, value: float) -> float:
    """One value through a contract transform (the vectorised form is in common.encoding)."""
    return math.log1p(value) if transform == "log1p" else value


class NumericFeature(_Strict):
    """clip to [min, max] → optional `transform` → scale.

    Scaling is (t - center) / scale when the contract gives `center` and `scale` (both in the
    transformed space), else a min-max mapping of the transformed bounds onto [0, 1].
    """

    name: str = Field(min_length=1)
    type: Literal["numeric"]
    # Finite only: an infinite bound would make the [0, 1] scaling produce NaN.
    min: float = Field(allow_inf_nan=False)
    max: float = Field(allow_inf_nan=False)
    transform: Literal["log1p"] | None = None
    center: float | None = Field(default=None, allow_inf_nan=False)
    scale: float | None = Field(default=None, allow_inf_nan=False)
    missing: Literal["reject", "impute"] = "reject"
    impute: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> NumericFeature:
        if not self.max > self.min:
            raise ValueError(
                f"feature '{self.name}': max ({self.max}) must be greater than min ({self.min})"
            )
        if self.missing == "impute" and self.impute is None:
            raise ValueError(f"feature '{self.name}': missing=impute needs an 'impute' value")
        if self.impute is not None and not self.min <= self.impute <= self.max:
            raise ValueError(
                f"feature '{self.name}': impute ({self.impute}) must lie within "
                f"[{self.min}, {self.max}]"
            )
        if self.transform == "log1p" and not self.min > -1:
            raise ValueError(
                f"feature '{self.name}': transform log1p needs min > -1 (log1p is undefined "
                f"at -1 and below), got min {self.min}"
            )
        self._check_standardisation()
        return self

    def _check_standardisation(self) -> None:
        if (self.center is None) != (self.scale is None):
            raise ValueError(
                f"feature '{self.name}': give both 'center' and 'scale' (standardisation), "
                "or neither (min-max scaling to [0, 1])"
            )
        if self.scale is None or self.center is None:
            return
        if not self.scale > 0:
            raise ValueError(f"feature '{self.name}': scale must be > 0, got {self.scale}")
        lo, hi = self.encoded_bounds
        if not (math.isfinite(lo) and math.isfinite(hi)) or max(abs(lo), abs(hi)) > (
            MAX_ENCODED_MAGNITUDE
        ):
            where = "log1p space" if self.transform else "the feature's own units"
            raise ValueError(
                f"feature '{self.name}': center/scale map [min, max] to [{lo:.3g}, {hi:.3g}]; "
                f"give them in the transformed space ({where}) so that encoded values stay "
                f"within ±{MAX_ENCODED_MAGNITUDE:g}"
            )

    @property
    def transformed_bounds(self) -> tuple[float, float]:
        """[min, max] after the transform (before scaling)."""
        return apply_transform(self.transform, self.min), apply_transform(self.transform, self.max)

    @property
    def encoded_bounds(self) -> tuple[float, float]:
        """The encoded values of min and max: (0, 1) unless the contract standardises."""
        return self.encode_value(self.min), self.encode_value(self.max)

    def encode_value(self, value: float) -> float:
        """One raw value through clip → transform → scale, in float64 (as the encoder does)."""
        t = apply_transform(self.transform, min(max(value, self.min), self.max))
        if self.center is not None and self.scale is not None:
            return (t - self.center) / self.scale
        lo, hi = self.transformed_bounds
        return (t - lo) / (hi - lo)

    @model_serializer(mode="wrap")
    def _omit_unset_options(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in _OPTIONAL_NUMERIC_KEYS:
            if key in data and data[key] is None:
                del data[key]
        return data


class CategoricalFeature(_Strict):
    name: str = Field(min_length=1)
    type: Literal["categorical"]
    vocabulary: list[str]
    missing: Literal["reject", "other"] = "other"

    @field_validator("vocabulary")
    @classmethod
    def _vocab(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("vocabulary must list at least one value")
        if len(set(v)) != len(v):
            raise ValueError("vocabulary has duplicate values")
        return v


class BinaryFeature(_Strict):
    name: str = Field(min_length=1)
    type: Literal["binary"]
    true_values: list[str] = Field(default_factory=lambda: ["1", "true", "True", "yes", "Yes"])
    false_values: list[str] = Field(default_factory=lambda: ["0", "false", "False", "no", "No"])
    missing: Literal["reject", "impute"] = "reject"
    impute: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> BinaryFeature:
        if not self.true_values or not self.false_values:
            raise ValueError(
                f"feature '{self.name}': true_values and false_values must not be empty"
            )
        if set(self.true_values) & set(self.false_values):
            raise ValueError(f"feature '{self.name}': a value is both true and false")
        if self.missing == "impute" and self.impute is None:
            raise ValueError(f"feature '{self.name}': missing=impute needs an 'impute' value")
        return self


Feature = Annotated[
    NumericFeature | CategoricalFeature | BinaryFeature, Field(discriminator="type")
]


class Contract(_Strict):
    """A federation's agreement on one prediction task."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: int = Field(ge=1)
    task: Literal["churn", "propensity"]
    description: str = ""
    label: Label
    id: str = Field(
        min_length=1, description="Customer id column: used for splits, never a feature."
    )
    drop: list[str] = Field(default_factory=list, description="Columns never read (PII, leaky).")
    features: list[Feature] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features: duplicate feature names {dupes}")
        reserved = {"label.column": self.label.column, "id": self.id}
        for field, col in reserved.items():
            if col in names:
                raise ValueError(f"{field}: column '{col}' is also declared as a feature")
            if col in self.drop:
                raise ValueError(f"{field}: column '{col}' is also listed in drop")
        clash = sorted(set(names) & set(self.drop))
        if clash:
            raise ValueError(f"drop: columns {clash} are also declared as features")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def required_columns(self) -> list[str]:
        """Columns a training data set must have (scoring needs only the features)."""
        return [self.id, self.label.column, *self.feature_names]

    def feature(self, name: str) -> NumericFeature | CategoricalFeature | BinaryFeature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """sha256 of everything but the prose: equal hashes mean identical encodings and task."""
        semantic = self.model_dump(mode="json", exclude={"description"})
        return hashlib.sha256(
            json.dumps(semantic, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()


def _format_errors(err: ValidationError, source: str, data: dict) -> str:
    lines = []
    for e in err.errors():
        parts = [str(p) for p in e["loc"] if not isinstance(p, str) or p not in _TYPE_TAGS]
        loc = ".".join(parts)
        hint = ""
        if e["type"] == "string_type" and isinstance(e.get("input"), bool | int | float):
            hint = " (quote it in the YAML: unquoted Yes/No/on/off/1/0 are not strings)"
        lines.append(f"  - {_name_feature(loc, e['loc'], data) or '<root>'}: {e['msg']}{hint}")
    return f"invalid data contract {source}:\n" + "\n".join(lines)


def _name_feature(loc: str, raw: tuple, data: dict) -> str:
    """Add the feature's name to a location like features.3.vocabulary, if it has one."""
    if len(raw) < 2 or raw[0] != "features" or not isinstance(raw[1], int):
        return loc
    features = data.get("features")
    if not isinstance(features, list) or raw[1] >= len(features):
        return loc
    name = features[raw[1]].get("name") if isinstance(features[raw[1]], dict) else None
    return f"{loc} (feature '{name}')" if isinstance(name, str) else loc


_TYPE_TAGS = {"numeric", "categorical", "binary"}


def parse_contract(data: object, source: str = "<memory>") -> Contract:
    """Validate an already-parsed mapping; raise ContractError naming each bad field."""
    if not isinstance(data, dict):
        raise ContractError(f"invalid data contract {source}: expected a mapping at the top level")
    try:
        return Contract.model_validate(data)
    except ValidationError as err:
        raise ContractError(_format_errors(err, source, data)) from None


def load_contract(path: str | Path) -> Contract:
    """Read and validate a contract YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ContractError(f"cannot read data contract '{p}': {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ContractError(f"data contract '{p}' is not valid YAML: {exc}") from None
    return parse_contract(data, source=f"'{p}'")


def contract_from_json(text: str) -> Contract:
    """Rebuild a contract stored canonically (e.g. in the model registry)."""
    return parse_contract(json.loads(text), source="<registry>")
