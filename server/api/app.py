"""The Atoll scoring API: browse published models and score records with them.

uvicorn --factory server.api.app:app_from_env   (reads ATOLL_REGISTRY_URL)

Every route but /health needs an API key (server.api.auth); bodies, records and request rates
are limited (server.api.limits).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from privacy.audit import load_public_keys
from privacy.store import open_privacy_db
from server.api.audit_trail import ApiAudit, default_key_path
from server.api.auth import ApiKeyStore, AuthMiddleware, unguarded_routes
from server.api.deps import ModelCache
from server.api.limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_PER_SECOND,
    BodyLimitMiddleware,
    TokenBucketLimiter,
)
from server.api.routes import audit, budgets, health, models, predict
from server.registry import ModelNotFound, Registry, RegistryError
from server.spend_reports import SpendReports

log = logging.getLogger(__name__)

DEFAULT_MAX_RECORDS = 1000


def _version() -> str:
    try:
        return version("atoll")
    except PackageNotFoundError:
        return "0.0.0"


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 without the `input`/`ctx` keys: submitted values may be personal data."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")}
        for e in exc.errors()
    ]
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": errors}
    )


async def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=status.HTTP_404_NOT_FOUND, content={"detail": str(exc)})


async def _registry_error(_request: Request, exc: Exception) -> JSONResponse:
    log.error("registry error: %s", exc)
    return JSONResponse(
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR, content={"detail": str(exc)}
    )


async def _database_down(_request: Request, exc: Exception) -> JSONResponse:
    log.error("registry database unavailable: %s", type(exc).__name__)
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        content={"detail": "the model registry database is unavailable; retry shortly"},
    )


def create_app(
    registry_url: str,
    *,
    max_records: int = DEFAULT_MAX_RECORDS,
    model_cache_size: int = 16,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    rate_per_second: float = DEFAULT_RATE_PER_SECOND,
    rate_burst: int = DEFAULT_RATE_BURST,
    audit_key: Path | None = None,
    audit_public_keys: list[Path] | None = None,
) -> FastAPI:
    """Build the API over the registry at `registry_url` (migrated on open; holds the API keys)."""
    if max_records < 1:
        raise ValueError(f"max_records must be at least 1, got {max_records}")
    limiter = TokenBucketLimiter(rate_per_second, rate_burst)
    registry = Registry(registry_url)
    privacy_engine = open_privacy_db(registry_url)  # spend reports and audit logs
    api_audit = ApiAudit(privacy_engine, audit_key or default_key_path(registry_url))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        registry.close()  # release pooled database connections on shutdown
        privacy_engine.dispose()

    app = FastAPI(
        title="Atoll scoring API",
        lifespan=lifespan,
        version=_version(),
        description="Models trained by federated, differentially private learning: model cards "
        "(metrics, participants, privacy spent) and scoring with reason codes.",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.registry = registry
    app.state.privacy_engine = privacy_engine
    app.state.spend_reports = SpendReports.from_engine(privacy_engine)
    app.state.api_audit = api_audit
    app.state.audit_keys = {
        api_audit.signer.key_id: api_audit.signer.public_key_pem,
        **load_public_keys(audit_public_keys or []),
    }
    app.state.model_cache = ModelCache(model_cache_size)
    app.state.max_records = max_records
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ModelNotFound, _not_found)
    app.add_exception_handler(RegistryError, _registry_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(predict.router)
    app.include_router(budgets.router)
    app.include_router(audit.router)
    app.state.api_keys = ApiKeyStore(registry.engine)
    # Last added runs first: authenticate (and rate-limit) before anything reads the body.
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(
        AuthMiddleware, store=app.state.api_keys, limiter=limiter, on_denied=api_audit.denied
    )
    if unguarded := unguarded_routes(app):
        raise RuntimeError(
            f"routes without a permission: {', '.join(unguarded)}; add "
            "dependencies=[Depends(require(...))] to them (server.api.auth)"
        )
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory`: the registry URL comes from ATOLL_REGISTRY_URL."""
    url = os.environ.get("ATOLL_REGISTRY_URL")
    if not url:
        raise RuntimeError("set ATOLL_REGISTRY_URL to the registry database URL to serve models")
    return create_app(url)
