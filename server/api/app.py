"""The Atoll scoring API: browse published models and score records with them.

uvicorn --factory server.api.app:app_from_env   (reads ATOLL_* variables: server.api.settings)

Every route but /health needs an API key (server.api.auth); bodies, records and request rates
are limited (server.api.limits), failed attempts per client address before authentication.
Audit: server.api.audit_trail (the API's own signed log, aggregated auth failures, checkpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from privacy.audit import Checkpointer, CheckpointPolicy, load_public_keys
from privacy.store import open_privacy_db
from server.api.audit_trail import (
    ADMIN_LOG_ID,
    LOG_ID,
    ApiAudit,
    AuditTrust,
)
from server.api.auth import (
    DEFAULT_KEY_CACHE_SECONDS,
    ApiKeyStore,
    AuthMiddleware,
    KeyCache,
    document_bearer_auth,
    unguarded_routes,
)
from server.api.auth_failures import AuditMaintenance, AuthFailureTally
from server.api.deps import DEFAULT_LATEST_CACHE_SECONDS, ModelCache
from server.api.limits import (
    DEFAULT_CLIENT_RATE_BURST,
    DEFAULT_CLIENT_RATE_PER_SECOND,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_PER_SECOND,
    BodyLimitMiddleware,
    RateLimiter,
    RedisTokenBucketLimiter,
    TokenBucketLimiter,
)
from server.api.registry_trust import row_refused
from server.api.routes import audit, budgets, health, models, predict, queries
from server.api.settings import (
    DEFAULT_CHECKPOINT_EVERY_ENTRIES,
    DEFAULT_CHECKPOINT_EVERY_MINUTES,
    DEFAULT_MAX_RECORDS,
    ApiSettings,
)
from server.registry import ModelNotFound, Registry, RegistryError, RowRefused
from server.registry_signing import RowVerifier
from server.spend_reports import SpendReports

log = logging.getLogger(__name__)


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
    client_rate_per_second: float = DEFAULT_CLIENT_RATE_PER_SECOND,
    client_rate_burst: int = DEFAULT_CLIENT_RATE_BURST,
    audit_key: Path | None = None,
    audit_public_keys: list[Path] | None = None,
    api_public_keys: list[Path] | None = None,
    admin_public_keys: list[Path] | None = None,
    registry_public_keys: list[Path] | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every_entries: int = DEFAULT_CHECKPOINT_EVERY_ENTRIES,
    checkpoint_every_minutes: float = DEFAULT_CHECKPOINT_EVERY_MINUTES,
    maintenance_seconds: float = 5.0,
    key_cache_seconds: float = DEFAULT_KEY_CACHE_SECONDS,
    latest_cache_seconds: float = DEFAULT_LATEST_CACHE_SECONDS,
    rate_limit_url: str | None = None,
) -> FastAPI:
    """Build the API over the registry at `registry_url` (migrated on open; holds the API keys).

    The public keys are the verifier's pinned configuration, per log: `api_public_keys` for the
    API's own log (its signing key `audit_key` must be one of them when given),
    `admin_public_keys` for the operators' log, `audit_public_keys` for the others (coordinator,
    nodes). With `checkpoint_dir` the API writes signed checkpoints of the api and admin logs
    there every `checkpoint_every_entries` entries or `checkpoint_every_minutes` minutes.
    `registry_public_keys` (required) pin the coordinator's publishing key: a model whose registry
    row does not verify is refused with 409 (and audited); the others are served.

    A verified key is trusted for `key_cache_seconds` without a query (a revocation or rotation
    made in this process applies at once, one made elsewhere within that time); "latest" is
    re-resolved every `latest_cache_seconds`. With `rate_limit_url` (Redis) the per-key rate limit
    is shared by every worker of the deployment; without it, it is per process.
    """
    if max_records < 1:
        raise ValueError(f"max_records must be at least 1, got {max_records}")
    try:
        settings = ApiSettings(
            registry_url=registry_url,
            max_records=max_records,
            model_cache_size=model_cache_size,
            max_body_bytes=max_body_bytes,
            rate_per_second=rate_per_second,
            rate_burst=rate_burst,
            client_rate_per_second=client_rate_per_second,
            client_rate_burst=client_rate_burst,
            audit_key=audit_key,
            audit_public_keys=audit_public_keys or [],
            api_public_keys=api_public_keys or [],
            admin_public_keys=admin_public_keys or [],
            registry_public_keys=registry_public_keys or [],
            checkpoint_dir=checkpoint_dir,
            checkpoint_every_entries=checkpoint_every_entries,
            checkpoint_every_minutes=checkpoint_every_minutes,
            maintenance_seconds=maintenance_seconds,
            key_cache_seconds=key_cache_seconds,
            latest_cache_seconds=latest_cache_seconds,
            rate_limit_url=rate_limit_url,
        )
    except ValidationError as exc:
        raise ValueError(_validation_message(exc)) from None
    return build_app(settings)


def build_app(settings: ApiSettings) -> FastAPI:
    """The API as `settings` describe it (see `create_app`)."""
    trust = AuditTrust(
        api=load_public_keys(settings.api_public_keys),
        admin=load_public_keys(settings.admin_public_keys),
        other=load_public_keys(settings.audit_public_keys),
    )
    limiter: RateLimiter
    if settings.rate_limit_url is not None:
        limiter = RedisTokenBucketLimiter(
            settings.rate_limit_url,
            settings.rate_per_second,
            settings.rate_burst,
            namespace=RedisTokenBucketLimiter.namespace_for(settings.registry_url),
        )
    else:
        limiter = TokenBucketLimiter(settings.rate_per_second, settings.rate_burst)
    client_limiter = TokenBucketLimiter(
        settings.client_rate_per_second, settings.client_rate_burst, settings.client_table_size
    )
    verifier = RowVerifier.from_files(settings.registry_public_keys)  # none pinned: no start
    registry = Registry(settings.registry_url, verifier=verifier)
    privacy_engine = open_privacy_db(settings.registry_url)  # spend reports and audit logs
    try:
        api_audit = ApiAudit(
            privacy_engine, settings.key_path(), pinned=trust.api if trust.api else None
        )
    except BaseException:
        registry.close()
        privacy_engine.dispose()
        raise
    tally = AuthFailureTally(
        api_audit.auth_failures, max_clients_per_minute=settings.auth_failure_max_clients
    )
    checkpointer = None
    if settings.checkpoint_dir is not None:
        checkpointer = Checkpointer(
            privacy_engine,
            [LOG_ID, ADMIN_LOG_ID],
            api_audit.signer,
            CheckpointPolicy(
                settings.checkpoint_dir,
                every_entries=settings.checkpoint_every_entries,
                every_seconds=settings.checkpoint_every_minutes * 60,
            ),
        )
    else:
        log.warning(
            "no checkpoint directory: the api and admin logs get no signed checkpoints, so a "
            "deleted tail cannot be detected (serve with --checkpoint-dir)"
        )
    maintenance = AuditMaintenance(tally, checkpointer)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Everything loaded so far (torch, pandas, the app) lives as long as the process: keep it
        # out of the cyclic GC, whose full collections would otherwise scan ~300k objects
        # (~0.1 s, a latency spike for every request in flight) now and then.
        gc.freeze()
        task = asyncio.create_task(_maintain(maintenance, settings.maintenance_seconds))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                await anyio.to_thread.run_sync(api_audit.close)  # pending request entries
                await anyio.to_thread.run_sync(maintenance.shutdown)  # last tallies, checkpoints
                if isinstance(limiter, RedisTokenBucketLimiter):
                    await limiter.aclose()
            finally:
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
    app.state.settings = settings
    app.state.registry = registry
    app.state.privacy_engine = privacy_engine
    app.state.spend_reports = SpendReports.from_engine(privacy_engine)
    app.state.api_audit = api_audit
    app.state.audit_trust = trust
    app.state.checkpoint_dir = settings.checkpoint_dir
    app.state.auth_failures = tally
    app.state.audit_maintenance = maintenance
    app.state.client_limiter = client_limiter
    app.state.model_cache = ModelCache(
        settings.model_cache_size, latest_ttl=settings.latest_cache_seconds
    )
    app.state.max_records = settings.max_records
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ModelNotFound, _not_found)
    app.add_exception_handler(RegistryError, _registry_error)
    app.add_exception_handler(RowRefused, row_refused)
    app.add_exception_handler(OperationalError, _database_down)
    app.include_router(predict.router)  # first: the hot path matches on the first route tried
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(budgets.router)
    app.include_router(audit.router)
    app.include_router(queries.router)
    app.state.api_keys = ApiKeyStore(registry.engine)
    app.state.key_cache = KeyCache(app.state.api_keys, ttl=settings.key_cache_seconds)
    app.state.limiter = limiter
    # Last added runs first: limit per address and authenticate before anything reads the body.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        AuthMiddleware,
        store=app.state.api_keys,
        limiter=limiter,
        client_limiter=client_limiter,
        failures=tally,
        keys=app.state.key_cache,
    )
    document_bearer_auth(app)
    if unguarded := unguarded_routes(app):
        raise RuntimeError(
            f"routes without a permission: {', '.join(unguarded)}; add "
            "dependencies=[Depends(require(...))] to them (server.api.auth)"
        )
    return app


def dispose(app: FastAPI) -> None:
    """Release what `build_app` opened, for an app that never ran (its lifespan does this
    otherwise): `atoll serve --workers N` builds one to check the settings, then lets the
    workers build their own."""
    app.state.api_audit.close()
    app.state.registry.close()
    app.state.privacy_engine.dispose()


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


async def _maintain(maintenance: AuditMaintenance, every: float) -> None:
    """Off the request path: flush closed minutes of auth failures, write due checkpoints."""
    while True:
        await asyncio.sleep(every)
        try:
            await anyio.to_thread.run_sync(maintenance.tick)
        except Exception:  # keep going: the next tick retries (errors are logged)
            log.exception("audit maintenance failed")


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory`: settings from ATOLL_* variables (`ApiSettings.from_env`)."""
    return build_app(ApiSettings.from_env())
