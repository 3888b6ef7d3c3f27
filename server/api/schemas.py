"""Request and response bodies of the scoring API (model cards come from server.registry)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.registry import ModelCard


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"] = Field(description="The service is alive; nothing more is said.")


class ModelVersions(BaseModel):
    name: str
    task: str
    latest_version: int
    versions: list[ModelCard]


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
