"""Liveness: the API process is up and answering. Nothing else.

No key, no database query, no counts: an unauthenticated caller learns only that the service is
alive, and a flood of health checks costs no database work. Readiness of the registry shows on
the authenticated routes (503 while the database is down).
"""

from __future__ import annotations

from fastapi import APIRouter

from server.api.schemas import Health

router = APIRouter(tags=["health"])
_ALIVE = Health(status="ok")


@router.get("/health", response_model=Health)
async def health() -> Health:
    """`{"status": "ok"}` while the process serves requests."""
    return _ALIVE
