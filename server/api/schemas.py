"""Request and response bodies of the scoring API (model cards come from server.registry_cards)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.registry_cards import ModelCard


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"] = Field(description="The service is alive; nothing more is said.")


class ModelVersions(BaseModel):
    name: str
    task: str
    latest_version: int
    versions: list[ModelCard]


class DriftCheckOut(BaseModel):
    """A model version's last drift check, as its card shows it (server.drift.summary)."""

    checked_at: str
    flagged: list[str]
    psi: dict[str, float]
    alpha: float | None
    check_id: int


class ModelCardOut(ModelCard):
    """A model card as the API shows it: the signed card plus its last drift check (not part of
    the signed row: checks come after publishing; null if never checked)."""

    last_drift_check: DriftCheckOut | None = None


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"records": [{"tenure": 12, "contract": "Month-to-month"}], "top_k": 3}]
        },
    )

    records: list[dict[str, Any]] = Field(
        min_length=1,
        description="Records keyed by the contract's feature names. The id and label columns "
        "may be present and are ignored; any other unknown field is an error.",
    )
    top_k: int = Field(default=3, ge=0, le=50, description="Reason codes to return per record.")


class ReasonCodeOut(BaseModel):
    feature: str
    contribution: float = Field(
        description="Change in logit versus the feature at its neutral baseline."
    )
    direction: Literal["increases", "decreases"]


class Prediction(BaseModel):
    probability: float
    reason_codes: list[ReasonCodeOut]
    warnings: list[str]


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    version: int
    contract_hash: str
    predictions: list[Prediction] = Field(description="One per submitted record, in order.")


class RecordProblemOut(BaseModel):
    record: int | None = Field(description="Index of the record in `records`.")
    field: str | None
    problem: str


class RecordsInvalidOut(BaseModel):
    detail: list[RecordProblemOut]


class ErrorOut(BaseModel):
    detail: str


# ---- federated analytics (server.api.routes.queries) -------------------------------------------


class QueryTarget(BaseModel):
    """Which contract a query is over: a published model's (`model`) or one staged on the
    coordinator (`contract_hash`). Give exactly one."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(None, max_length=200, description="A published model's name")
    contract_hash: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    spec: dict[str, Any] = Field(
        description="The query (common.analytics_math.Query): kind, field, group_by, filters, "
        "bins, quantiles, epsilon or noise_multiplier, min_count."
    )


class QueryPreviewIn(QueryTarget):
    nodes: int = Field(3, ge=1, le=10_000, description="How many nodes will answer")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ the nodes account at")
    target_half_width: float | None = Field(
        None, gt=0, description="Also give the ε that reaches this 95% half-width per cell"
    )
    cell_size: float | None = Field(None, gt=0, description="Rate/mean: the cell size meant")


class SubmissionOut(BaseModel):
    id: int
    status: Literal["queued", "running", "answered", "failed"]
    contract_hash: str
    spec: dict[str, Any]
    run_id: str | None
    query_id: int | None = Field(description="Set once answered: GET /queries/{query_id}")
    error: str | None
    created_at: str
    finished_at: str | None


class QuerySummaryOut(BaseModel):
    id: int
    run_id: str
    kind: str
    status: str
    contract: dict[str, str]
    participants: list[str]
    epsilon_per_node: dict[str, float]
    created_at: str


class QueryOut(BaseModel):
    id: int
    run_id: str
    kind: str
    status: str
    contract: dict[str, str]
    spec: dict[str, Any]
    nodes: dict[str, Any] = Field(description="Per node: answered with its ε, or refused, why")
    result: dict[str, Any] = Field(description="rows (cell, statistic, estimate, 95% interval)")
    created_at: str
