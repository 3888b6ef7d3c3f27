"""The query as a user writes it (JSON) and its limits: kinds, group-by, filters."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.errors import AtollError

Kind = Literal["count", "rate", "sum", "mean", "histogram", "quantile"]
KINDS: tuple[str, ...] = ("count", "rate", "sum", "mean", "histogram", "quantile")
Z95 = 1.959963984540054
TRUE, FALSE = "true", "false"
MAX_GROUP_BY = 2
MAX_VALUES = 20_000  # cells × values per cell one query may release
MAX_QUANTILES = 20
DEFAULT_QUANTILE_BINS = 50
DEFAULT_MIN_COUNT = 20.0


class QueryError(AtollError, ValueError):
    """A query that does not fit the contract; `code` names the check (sent as a refusal)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class FilterSpec(BaseModel):
    """Keep rows whose `field` is one of `values` (categorical/binary) or in [low, high]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(min_length=1, max_length=200)
    values: list[str] | None = Field(None, max_length=1000)
    low: float | None = Field(None, allow_inf_nan=False)
    high: float | None = Field(None, allow_inf_nan=False)


class Query(BaseModel):
    """One analytics query, e.g. `{"kind": "rate", "field": "Churn", "group_by":
    ["InternetService"], "epsilon": 0.5}`. Give `epsilon` (each node calibrates σ to spend at
    most this) or `noise_multiplier` (σ). `min_count` is the coordinator's reliability threshold
    (post-processing only; it never reaches a node)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    field: str = Field("", max_length=200)
    group_by: list[str] = Field(default_factory=list, max_length=MAX_GROUP_BY)
    filters: list[FilterSpec] = Field(default_factory=list, max_length=20)
    bins: int = Field(0, ge=0, le=100_000)
    quantiles: list[float] = Field(default_factory=list, max_length=MAX_QUANTILES)
    noise_multiplier: float = Field(0.0, ge=0, allow_inf_nan=False)
    epsilon: float = Field(0.0, ge=0, allow_inf_nan=False)
    min_count: float = Field(DEFAULT_MIN_COUNT, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _noise(self) -> Query:
        if (self.noise_multiplier > 0) == (self.epsilon > 0):
            raise ValueError("give exactly one of epsilon (target per node) or noise_multiplier")
        if any(not 0 < q < 1 for q in self.quantiles):
            raise ValueError("quantiles must lie strictly between 0 and 1")
        return self

    def to_pb(self, contract_hash: str) -> Any:
        from common.protos.atoll.node.v1 import runtime_pb2 as pb

        return pb.QuerySpec(
            kind=self.kind,
            field=self.field,
            group_by=list(self.group_by),
            filters=[
                pb.Filter(field=f.field, values=f.values or [], low=f.low, high=f.high)
                for f in self.filters
            ],
            bins=self.bins,
            quantiles=list(self.quantiles),
            noise_multiplier=self.noise_multiplier,
            target_epsilon=self.epsilon,
            contract_hash=contract_hash,
        )

    @classmethod
    def from_pb(cls, spec: Any) -> Query:
        """The node's view of a wire spec (raises pydantic's ValidationError if malformed)."""
        return cls(
            kind=spec.kind,
            field=spec.field,
            group_by=list(spec.group_by),
            filters=[
                FilterSpec(
                    field=f.field,
                    values=list(f.values) if f.values else None,
                    low=f.low if f.HasField("low") else None,
                    high=f.high if f.HasField("high") else None,
                )
                for f in spec.filters
            ],
            bins=spec.bins,
            quantiles=list(spec.quantiles),
            noise_multiplier=spec.noise_multiplier,
            epsilon=spec.target_epsilon,
        )
