"""Browse the registry: model names, their versions, model cards (never weights) and the last
drift check of a version."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from server.api.audit_trail import Audited
from server.api.auth import AUTH_RESPONSES, Permission, require
from server.api.deps import RegistryDep, parse_version
from server.api.schemas import ErrorOut, ModelCardOut, ModelVersions
from server.drift import DriftStore, summary
from server.registry_cards import ModelSummary

router = APIRouter(
    prefix="/models",
    tags=["models"],
    dependencies=[Depends(require(Permission.MODELS_READ)), Audited("api.model_read")],
    responses=AUTH_RESPONSES,
)
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such model or version."}
}


@router.get("", response_model=list[ModelSummary])
def list_models(registry: RegistryDep) -> list[ModelSummary]:
    """Every published model name with its versions."""
    return registry.list_models()


@router.get("/{name}", response_model=ModelVersions, responses=_NOT_FOUND)
def model_versions(name: str, registry: RegistryDep) -> ModelVersions:
    """All versions of one model, oldest first, as model cards."""
    cards = registry.versions(name)
    latest = cards[-1]
    return ModelVersions(
        name=latest.name, task=latest.task, latest_version=latest.version, versions=cards
    )


@router.get("/{name}/versions/{version}", response_model=ModelCardOut, responses=_NOT_FOUND)
def model_card(name: str, version: str, registry: RegistryDep) -> ModelCardOut:
    """One model card and its last drift check; `version` is a number or `latest`."""
    card = registry.card(name, parse_version(version))
    last = DriftStore(engine=registry.engine).latest(card.name, card.version, "check")
    return ModelCardOut(**card.model_dump(), last_drift_check=summary(last))


@router.get("/{name}/drift", responses=_NOT_FOUND)
def model_drift(name: str, registry: RegistryDep, version: str = "latest") -> dict[str, Any]:
    """The last drift check of a model version (`atoll drift check`): PSI per feature and the
    features flagged beyond the noise; `last_check` is null if it was never checked."""
    card = registry.card(name, parse_version(version))
    last = DriftStore(engine=registry.engine).latest(card.name, card.version, "check")
    return {"model": card.name, "version": card.version, "last_check": summary(last)}
