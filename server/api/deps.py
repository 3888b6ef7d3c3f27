"""FastAPI dependencies: the registry, and served models cached by (name, version).

Published versions are immutable, so a loaded model never goes stale; "latest" is resolved on
every request (one small query) so a new publish is served without a restart.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from common.contract import Contract
from common.model import load_model
from server.api.scoring import Scorer
from server.registry import ModelCard, Registry


@dataclass(frozen=True)
class LoadedModel:
    card: ModelCard
    contract: Contract
    scorer: Scorer


class ModelCache:
    """Thread-safe LRU of loaded models keyed by (name, version)."""

    def __init__(self, max_size: int = 16) -> None:
        self.max_size = max_size
        self._items: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times weights were read; lets tests prove the cache works

    def get(self, registry: Registry, name: str, version: int | None) -> LoadedModel:
        resolved = registry.latest_version(name) if version is None else version
        key = (name, resolved)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        stored = registry.get(name, resolved)
        model = load_model(stored.card.model_kind, stored.card.n_features, stored.weights)
        loaded = LoadedModel(stored.card, stored.contract, Scorer(stored.contract, model))
        with self._lock:
            self.loads += 1
            self._items[key] = loaded
            while len(self._items) > self.max_size:
                self._items.popitem(last=False)
        return loaded


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


def latest_model(name: str, registry: RegistryDep, cache: ModelCacheDep) -> LoadedModel:
    return cache.get(registry, name, None)


def versioned_model(
    name: str, version: str, registry: RegistryDep, cache: ModelCacheDep
) -> LoadedModel:
    return cache.get(registry, name, parse_version(version))
