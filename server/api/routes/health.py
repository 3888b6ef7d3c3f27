"""Liveness and readiness: the API is up and its registry database answers."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import RegistryDep
from server.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(registry: RegistryDep) -> Health:
    """`ok` plus the number of models; a database outage becomes 503 (see app handlers)."""
    return Health(status="ok", models=registry.count_models())
