"""What the model registry hands out: the card of a published version, listings, stored models.

Pydantic models at the registry's edge (`ModelCard` and the `Participant` and `PrivacyInfo` records
it carries, `ModelSummary`), `StoredModel` (a card with what is needed to serve it), the card of a
database row (`card_from_row`), and `json_safe`, which makes values storable in any JSON column.
The registry itself (publishing, reading, verifying rows) is `server.registry`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_serializer

from common.contract import Contract
from server.registry_models import ModelVersion


class Participant(BaseModel):
    """A node that contributed to a model (counts only, never data)."""

    model_config = ConfigDict(extra="allow")

    name: str
    node_id: int | str | None = None
    train_examples: int | None = Field(default=None, ge=0)
    test_examples: int | None = Field(default=None, ge=0)


class PrivacyInfo(BaseModel):
    """What the model cost in differential privacy; extra keys (noise, targets) are kept."""

    model_config = ConfigDict(extra="allow", ser_json_inf_nan="strings")

    delta: float | None = None
    epsilon_per_node: dict[str, float | None] = Field(default_factory=dict)
    mechanism: str | None = None

    @field_serializer("delta", "epsilon_per_node", when_used="json")
    def _finite_json(self, value: Any) -> Any:
        # No guarantee (noise 0) means epsilon = inf, which plain JSON cannot carry.
        return json_safe(value)


class ModelCard(BaseModel):
    """Everything about a published model except its weights."""

    model_config = ConfigDict(ser_json_inf_nan="strings", protected_namespaces=())

    name: str
    version: int
    task: str
    model_kind: str
    n_features: int
    contract_name: str
    contract_version: int
    contract_hash: str
    metrics: dict[str, Any]
    participants: list[Participant]
    privacy: PrivacyInfo
    run: dict[str, Any]
    created_at: datetime
    weights_sha256: str


class ModelSummary(BaseModel):
    """One model name and its versions, for listings."""

    name: str
    task: str
    latest_version: int
    versions: list[int]
    latest_created_at: datetime


@dataclass(frozen=True)
class StoredModel:
    """A published version with what is needed to serve it."""

    card: ModelCard
    weights: bytes
    contract: Contract


def json_safe(value: Any) -> Any:
    """JSON-storable copy: numpy → Python, tuples → lists, non-finite floats → strings.

    PostgreSQL's JSON rejects NaN/Infinity, yet epsilon is infinite when no noise is added.
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


PARTICIPANTS = TypeAdapter(list[Participant])


def card_from_row(row: ModelVersion) -> ModelCard:
    contract = json.loads(row.contract_json)
    return ModelCard(
        name=row.name,
        version=row.version,
        task=row.task,
        model_kind=row.model_kind,
        n_features=row.n_features,
        contract_name=contract["name"],
        contract_version=contract["version"],
        contract_hash=row.contract_hash,
        metrics=row.metrics,
        participants=PARTICIPANTS.validate_python(row.participants),
        privacy=PrivacyInfo.model_validate(row.privacy),
        run=row.run,
        created_at=row.created_at,
        weights_sha256=row.weights_sha256,
    )
