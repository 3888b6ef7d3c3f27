"""Cached keys and "latest": fast, yet a revoked or rotated key stops working as stated.

- A key revoked or rotated in the API's own process: 401 on the very next request.
- Revoked or rotated by another process (the `atoll apikey` CLI, another API worker): 401 within
  the key cache TTL (`key_cache_seconds`, default 1 s) of the change's commit.
- A recently verified key costs no query; failures are never cached.
- A new publish is served as "latest" within `latest_cache_seconds` (default 1 s).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers.api import RECORD, logreg_weights, publish, publisher_pub

from server.api.app import create_app
from server.api.auth import ApiKeyStore, KeyCache, Unauthenticated, parse_key
from server.api.deps import ModelCache
from server.registry import Registry

REPO = Path(__file__).resolve().parents[1]
TTL = 1.0


@pytest.fixture
def registry_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    with Registry(url) as registry:
        publish(registry, "toy", "logreg", logreg_weights([1.0, 0, 0, 0, 0, 0], 0.0))
    return url


@pytest.fixture
def served(registry_url: str) -> Iterator[tuple[TestClient, dict[str, int]]]:
    app = create_app(
        registry_url,
        registry_public_keys=[publisher_pub()],
        rate_per_second=10_000,
        rate_burst=10_000,
        key_cache_seconds=TTL,
    )
    store = app.state.api_keys
    queries = {"n": 0}
    authenticate = store.authenticate

    def counted(token: str) -> Any:
        queries["n"] += 1
        return authenticate(token)

    store.authenticate = counted
    with TestClient(app) as client:
        yield client, queries


def _predict(client: TestClient, key: str) -> int:
    return client.post(
        "/models/toy/predict",
        json={"records": [RECORD]},
        headers={"Authorization": f"Bearer {key}"},
    ).status_code


def test_a_verified_key_costs_no_query_and_failures_are_never_cached(
    served: tuple[TestClient, dict[str, int]], registry_url: str
) -> None:
    client, queries = served
    with ApiKeyStore.open(registry_url) as store:
        key = store.create("crm", "app")[1]
    key_id, secret = parse_key(key)  # type: ignore[misc]
    assert [_predict(client, key) for _ in range(20)] == [200] * 20
    assert queries["n"] <= 2  # one per TTL window at most
    wrong = f"atoll_{key_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    before = queries["n"]
    assert [_predict(client, wrong) for _ in range(5)] == [401] * 5
    assert queries["n"] == before + 5  # a wrong secret for a cached id still asks the store


def test_revocation_and_rotation_in_this_process_apply_at_once(
    served: tuple[TestClient, dict[str, int]], registry_url: str
) -> None:
    client, _queries = served
    with ApiKeyStore.open(registry_url) as store:  # another store object, same process
        info, key = store.create("crm", "app")
        other_info, other = store.create("other", "app")
        assert _predict(client, key) == _predict(client, other) == 200  # both cached now
        store.revoke(info.key_id)
        assert _predict(client, key) == 401  # the next request, not a TTL later
        _rotated, new = store.rotate(other_info.key_id)
        assert _predict(client, other) == 401
        assert _predict(client, new) == 200


def _cli(registry_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atoll", "apikey", *args, "--registry", registry_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def _seconds_until(client: TestClient, key: str, status: int, limit: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if _predict(client, key) == status:
            return time.monotonic() - t0
        time.sleep(0.02)
    return float("inf")


@pytest.mark.parametrize("change", ["revoke", "rotate"])
def test_a_change_by_another_process_applies_within_the_cache_ttl(
    served: tuple[TestClient, dict[str, int]], registry_url: str, change: str
) -> None:
    client, _queries = served
    with ApiKeyStore.open(registry_url) as store:
        info, key = store.create("crm", "app")
    for _ in range(int(TTL / 0.05) + 2):  # keep the key hot in the cache right up to the change
        assert _predict(client, key) == 200
        time.sleep(0.05)
    result = _cli(registry_url, change, info.key_id)  # another process; returns after its commit
    waited = _seconds_until(client, key, 401, limit=5 * TTL)
    assert waited <= TTL + 0.3, f"old secret still accepted {waited:.2f} s after the {change}"
    if change == "rotate":
        new = result.stdout.strip()
        assert _predict(client, new) == 200  # the new secret works at once (cache miss)


def test_key_cache_ttl_and_a_forget_racing_a_lookup() -> None:
    class Store:
        def __init__(self) -> None:
            self.calls = 0
            self.revoked: set[str] = set()
            self.during: Any = None

        def authenticate(self, token: str) -> Any:
            self.calls += 1
            if self.during is not None:
                self.during()
            key_id = token.split("_")[1]
            if key_id in self.revoked:
                raise Unauthenticated("revoked", "revoked key", key_id)
            from server.api.auth import Principal, Role

            return Principal(key_id, "n", Role.APP)

    now = [0.0]
    store = Store()
    cache = KeyCache(store, ttl=1.0, clock=lambda: now[0])  # type: ignore[arg-type]
    token = "atoll_0123456789ab_" + "A" * 43
    assert cache.lookup(token) is None
    assert cache.authenticate(token).key_id == "0123456789ab"
    assert cache.lookup(token) is not None
    assert cache.lookup(token[:-1] + "B") is None  # another secret: not a hit
    now[0] = 0.999
    assert cache.lookup(token) is not None
    now[0] = 1.0
    assert cache.lookup(token) is None  # expired exactly TTL after the query began
    # a revocation committed while a query is in flight: the stale answer is not cached
    store.during = lambda: cache.forget("0123456789ab")
    cache.authenticate(token)
    assert cache.lookup(token) is None
    store.during = None
    store.revoked.add("0123456789ab")
    with pytest.raises(Unauthenticated):
        cache.authenticate(token)
    assert cache.lookup(token) is None and len(cache) == 0
    no_cache = KeyCache(store, ttl=0)  # type: ignore[arg-type]
    store.revoked.clear()
    no_cache.authenticate(token)
    assert no_cache.lookup(token) is None


def test_latest_is_re_resolved_within_its_ttl(registry_url: str) -> None:
    with ApiKeyStore.open(registry_url) as store:
        key = store.create("crm", "app")[1]
    app = create_app(
        registry_url,
        registry_public_keys=[publisher_pub()],
        rate_per_second=10_000,
        rate_burst=10_000,
    )
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(app) as client:

        def version() -> int:
            r = client.post("/models/toy/predict", json={"records": [RECORD]}, headers=headers)
            assert r.status_code == 200, r.text
            return int(r.json()["version"])

        assert version() == 1
        cache: ModelCache = app.state.model_cache
        queries = cache.latest_queries
        assert [version() for _ in range(20)] == [1] * 20
        assert cache.latest_queries - queries <= 1  # not one query per request
        with Registry(registry_url) as registry:
            publish(registry, "toy", "logreg", logreg_weights([0.0, 1.0, 0, 0, 0, 0], 0.0))
        t0 = time.monotonic()
        while version() != 2:
            assert time.monotonic() - t0 < cache.latest_ttl + 0.5, "new version not served"
            time.sleep(0.02)
