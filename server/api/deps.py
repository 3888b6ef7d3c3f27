"""FastAPI dependencies: the registry, and served models cached by (name, version).

Published versions are immutable, so a loaded model never goes stale. "latest" is resolved with
one small query and remembered for `latest_ttl` seconds (default 1 s): a new publish is served
within that time, without a restart and without a query per request. Half-way through the TTL
the first request re-resolves it in the background (and loads a new version), so requests for a
model in steady use never wait for the registry.

The model dependencies are async: a cached model is found on the event loop (no thread hop);
only a miss (first use of a version, or "latest" to re-resolve) reads the registry in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, HTTPException, Request, status

from common.contract import Contract
from common.model import load_for
from server.analytics import QueryStore
from server.api.scoring import Scorer
from server.query_jobs import QueryRunnerError, QueryRunnerSettings, QuerySubmitter, SubmissionStore
from server.registry import Registry
from server.registry_cards import ModelCard

DEFAULT_LATEST_CACHE_SECONDS = 1.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    card: ModelCard
    contract: Contract
    scorer: Scorer


class ModelCache:
    """Thread-safe LRU of loaded models keyed by (name, version), plus the latest version of each
    name for `latest_ttl` seconds (0: ask the registry every time)."""

    def __init__(
        self,
        max_size: int = 16,
        latest_ttl: float = DEFAULT_LATEST_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if latest_ttl < 0:
            raise ValueError(f"latest_ttl must be >= 0, got {latest_ttl}")
        self.max_size = max_size
        self.latest_ttl = latest_ttl
        self._clock = clock
        self._items: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._latest: dict[str, tuple[int, float]] = {}  # name -> (version, resolved until)
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()
        self.loads = 0  # how many times weights were read; lets tests prove the cache works
        self.latest_queries = 0  # how many times "latest" was resolved in the registry

    def cached(self, name: str, version: int | None) -> LoadedModel | None:
        """The loaded model if no registry read is needed (non-blocking), else None."""
        with self._lock:
            if version is None:
                latest = self._latest.get(name)
                if latest is None or self._clock() >= latest[1]:
                    return None
                version = latest[0]
            hit = self._items.get((name, version))
            if hit is not None:
                self._items.move_to_end((name, version))
            return hit

    def get(self, registry: Registry, name: str, version: int | None) -> LoadedModel:
        """The model, reading the registry as needed (blocking: call it from a thread)."""
        hit = self.cached(name, version)
        if hit is not None:
            return hit
        resolved = self._resolve_latest(registry, name) if version is None else version
        key = (name, resolved)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        stored = registry.get(name, resolved)
        model = load_for(stored.card.model_kind, stored.contract, stored.weights)
        loaded = LoadedModel(stored.card, stored.contract, Scorer(stored.contract, model))
        with self._lock:
            self.loads += 1
            self._items[key] = loaded
            while len(self._items) > self.max_size:
                self._items.popitem(last=False)
        return loaded

    def refresh_due(self, name: str) -> bool:
        """Whether "latest" of `name` is past half its TTL and not being re-resolved yet (then it
        is marked in flight: call `refresh_latest` exactly once)."""
        with self._lock:
            latest = self._latest.get(name)
            if latest is None or name in self._refreshing:
                return False
            if self._clock() < latest[1] - self.latest_ttl / 2:
                return False
            self._refreshing.add(name)
            return True

    def refresh_latest(self, registry: Registry, name: str) -> None:
        """Re-resolve "latest" and load a new version if there is one (in a thread), so that
        requests keep finding it cached. A failure leaves the entry to expire on its own."""
        try:
            self.get(registry, name, self._resolve_latest(registry, name))
        except Exception as exc:  # noqa: BLE001 - e.g. the database is down: retried later
            log.warning("refreshing the latest version of a model failed: %s", type(exc).__name__)
        finally:
            with self._lock:
                self._refreshing.discard(name)

    def _resolve_latest(self, registry: Registry, name: str) -> int:
        started = self._clock()
        version = registry.latest_version(name)  # ModelNotFound (404) is not cached
        with self._lock:
            self.latest_queries += 1
            if self.latest_ttl > 0:
                self._latest[name] = (version, started + self.latest_ttl)
        return version


def get_registry(request: Request) -> Registry:
    return request.app.state.registry


def get_model_cache(request: Request) -> ModelCache:
    return request.app.state.model_cache


RegistryDep = Annotated[Registry, Depends(get_registry)]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]


def parse_version(version: str) -> int | None:
    """Path segment → version number, None for "latest"; 422 otherwise (value not echoed)."""
    if version == "latest":
        return None
    if version.isascii() and version.isdigit() and int(version) >= 1:
        return int(version)
    raise HTTPException(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail="path parameter 'version' must be a positive integer or 'latest'",
    )


async def model_for(request: Request, name: str, version: int | None) -> LoadedModel:
    """The served model (`version` None: latest): from the cache on the loop, else in a thread."""
    cache: ModelCache = request.app.state.model_cache
    registry: Registry = request.app.state.registry
    hit = cache.cached(name, version)
    if hit is not None:
        if version is None and cache.refresh_due(name):  # ahead of expiry, off the request
            asyncio.get_running_loop().run_in_executor(None, cache.refresh_latest, registry, name)
        return hit
    return await anyio.to_thread.run_sync(cache.get, registry, name, version)


async def latest_model(name: str, request: Request) -> LoadedModel:
    return await model_for(request, name, None)


async def versioned_model(name: str, version: str, request: Request) -> LoadedModel:
    return await model_for(request, name, parse_version(version))


# ---- federated analytics -------------------------------------------------------------------------
def get_query_store(request: Request) -> QueryStore:
    """The coordinator's stored queries, on the registry's (migrated) engine."""
    state = request.app.state
    store: QueryStore | None = getattr(state, "query_store", None)
    if store is None:
        store = state.query_store = QueryStore.from_engine(state.registry.engine)
    return store


def get_submissions(request: Request) -> SubmissionStore:
    state = request.app.state
    store: SubmissionStore | None = getattr(state, "query_submissions", None)
    if store is None:
        store = state.query_submissions = SubmissionStore(state.registry.engine)
    return store


NOT_CONFIGURED = (
    "query submission is not configured on this API: its operator sets $ATOLL_QUERY_RUNNER "
    "(see server.query_jobs)"
)


def get_query_submitter(request: Request) -> QuerySubmitter:
    """How this API submits query runs (503 if its operator has not set it up)."""
    state = request.app.state
    submitter: QuerySubmitter | None = getattr(state, "query_submitter", None)
    if submitter is None:
        try:
            settings = QueryRunnerSettings.from_env()
        except QueryRunnerError as err:
            log.error("%s", err)
            settings = None
        if settings is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=NOT_CONFIGURED)
        submitter = state.query_submitter = QuerySubmitter(settings)
    return submitter


QueryStoreDep = Annotated[QueryStore, Depends(get_query_store)]
SubmissionsDep = Annotated[SubmissionStore, Depends(get_submissions)]
