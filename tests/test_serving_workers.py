"""Several API workers: `atoll serve --workers 2`, the per-key rate limit shared through Redis, and
one intact audit chain written by both workers.

Redis is the one CI runs at 127.0.0.1:6379 (ATOLL_TEST_REDIS_URL overrides); unreachable means
failure, never a skip. Each test uses its own namespace, so runs never share buckets.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers.api import RECORD, logreg_weights, publish, publisher_pub
from typer.testing import CliRunner

from atoll.cli import app as atoll_cli
from atoll.processes import flower_env, free_port, spawn, wait_for_port
from privacy.audit import AuditSigner, load_public_keys, query, verify
from server.api.app import create_app
from server.api.auth import ApiKeyStore
from server.api.limits import LimiterUnavailable, RedisTokenBucketLimiter
from server.api.settings import ApiSettings
from server.registry import Registry

REDIS_URL = os.environ.get("ATOLL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def redis_url() -> str:
    host, _, port = REDIS_URL.removeprefix("redis://").split("/")[0].partition(":")
    try:
        socket.create_connection((host, int(port or 6379)), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is unreachable ({exc}); start it — this never skips")
    return REDIS_URL


def _limiter(url: str, rate: float, burst: int, namespace: str) -> RedisTokenBucketLimiter:
    return RedisTokenBucketLimiter(url, rate, burst, namespace=namespace)


def test_redis_buckets_are_shared_by_every_limiter_of_a_namespace(redis_url: str) -> None:
    namespace = f"atoll:test:{uuid.uuid4().hex}"

    async def run() -> tuple[list[float], list[float], float, float]:
        workers = [_limiter(redis_url, 2.0, 4, namespace) for _ in range(2)]  # two "workers"
        burst = [await workers[i % 2].acquire("key-a") for i in range(6)]
        other = [await workers[0].acquire("key-b")]  # another key: its own bucket
        await asyncio.sleep(0.55)  # one token back at 2/s
        again = await workers[1].acquire("key-a")
        after = await workers[0].acquire("key-a")
        for w in workers:
            await w.aclose()
        return burst, other, again, after

    burst, other, again, after = asyncio.run(run())
    assert burst[:4] == [0.0] * 4 and all(w > 0 for w in burst[4:])  # 4 in all, not 4 each
    assert 0 < burst[4] <= 0.5
    assert other == [0.0]
    assert again == 0.0 and after > 0


def test_unreachable_redis_fails_closed_with_503(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    with Registry(url) as registry:
        publish(registry, "toy", "logreg", logreg_weights([1.0, 0, 0, 0, 0, 0], 0.0))
    with ApiKeyStore.open(url) as store:
        key = store.create("crm", "app")[1]
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(
        create_app(url, registry_public_keys=[publisher_pub()], rate_limit_url=dead)
    ) as client:
        r = client.post(
            "/models/toy/predict",
            json={"records": [RECORD]},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert r.status_code == 503 and "rate limiter is unavailable" in r.json()["detail"]
    with pytest.raises(LimiterUnavailable):
        asyncio.run(_limiter(dead, 1, 1, "x").acquire("k"))


def test_settings_travel_to_workers_unchanged(tmp_path: Path) -> None:
    settings = ApiSettings(
        registry_url=f"sqlite:///{tmp_path / 'r.db'}",
        rate_per_second=12.5,
        rate_burst=7,
        rate_limit_url="redis://127.0.0.1:6379/3",
        key_cache_seconds=0.5,
        latest_cache_seconds=2.0,
        api_public_keys=[tmp_path / "a.pub", tmp_path / "b.pub"],
        checkpoint_dir=tmp_path / "share",
        checkpoint_every_entries=50,
        checkpoint_every_minutes=2.5,
    )
    back = ApiSettings.from_env(settings.to_env())
    assert back.model_dump(exclude={"audit_key"}) == settings.model_dump(exclude={"audit_key"})
    assert back.key_path() == settings.key_path()
    with pytest.raises(ValueError, match="must be a Redis URL"):
        ApiSettings(registry_url="sqlite://", rate_limit_url="http://x")


def test_several_workers_need_a_shared_limiter(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        atoll_cli, ["serve", "--registry", f"sqlite:///{tmp_path / 'r.db'}", "--workers", "2"]
    )
    assert result.exit_code == 2 and "--rate-limit-url" in " ".join(result.output.split())


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (spawn() runs the command under a supervisor: the workers are
    grandchildren of the process it returns)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        level = [child for child, parent in parents.items() if parent in frontier]
        found += level
        frontier = level
    return found


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def two_workers(tmp_path: Path, redis_url: str) -> Iterator[dict[str, object]]:
    url = f"sqlite:///{tmp_path / 'coordinator' / 'registry.db'}"
    (tmp_path / "coordinator").mkdir()
    with Registry(url) as registry:
        publish(registry, "toy", "logreg", logreg_weights([1.0, 0, 0, 0, 0, 0], 0.0))
    with ApiKeyStore.open(url) as store:
        keys = {name: store.create(name, "app")[1] for name in ("limited", "other")}
    audit_key = tmp_path / "keys" / "api.pem"
    AuditSigner.create(audit_key)
    pub = AuditSigner.public_key_path(audit_key)
    port = free_port()
    argv = ["-m", "atoll", "serve", "--registry", url, "--port", str(port), "--workers", "2"]
    argv += ["--rate-limit-url", redis_url, "--rate-per-second", "10", "--rate-burst", "10"]
    argv += ["--audit-key", str(audit_key), "--api-audit-public-key", str(pub)]
    argv += ["--registry-public-key", str(publisher_pub())]
    proc = spawn("api", [sys.executable, *argv], tmp_path / "api.log", flower_env())
    try:
        wait_for_port(port, timeout=90, proc=proc)
        deadline = time.monotonic() + 60
        while len(workers := [c for c in _children(proc.pid) if _is_worker(c)]) < 2:
            assert time.monotonic() < deadline, proc.log_text()
            time.sleep(0.2)
        yield {"url": url, "port": port, "keys": keys, "pub": pub, "proc": proc, "pids": workers}
    finally:
        proc.stop()


def _is_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline


def test_two_workers_share_the_rate_limit_and_one_audit_chain(
    two_workers: dict[str, object],
) -> None:
    port, keys = two_workers["port"], two_workers["keys"]
    assert isinstance(keys, dict)
    pids = two_workers["pids"]
    assert isinstance(pids, list) and len(pids) == 2
    cpu0 = {pid: _cpu_seconds(pid) for pid in pids}
    duration = 4.0

    def caller(key: str) -> Counter[int]:
        """One keep-alive connection (the kernel hands connections to either worker)."""
        codes: Counter[int] = Counter()
        end = time.monotonic() + duration
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while time.monotonic() < end:
                r = client.post(
                    "/models/toy/predict",
                    json={"records": [RECORD]},
                    headers={"Authorization": f"Bearer {key}"},
                )
                codes[r.status_code] += 1
        return codes

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        limited = [pool.submit(caller, keys["limited"]) for _ in range(6)]
        other = pool.submit(caller, keys["other"])
        codes: Counter[int] = sum((f.result() for f in limited), Counter())
        other_codes = other.result()
    elapsed = time.monotonic() - t0
    assert set(codes) <= {200, 429}, codes
    # burst 10 + 10/s over the run, shared by both workers (not twice that)
    ceiling = 10 + 10 * elapsed
    assert codes[200] <= ceiling + 2, (codes, elapsed)
    assert codes[200] >= 0.6 * (10 + 10 * duration), (codes, elapsed)
    assert codes[429] > codes[200]  # demand well above the limit: the limit is what we measure
    assert other_codes[200] > 0  # another key has its own bucket
    grew = {pid: _cpu_seconds(pid) - cpu0[pid] for pid in pids}
    assert all(g > 0.05 for g in grew.values()), f"a worker did no work: {grew}"

    proc = two_workers["proc"]
    url, pub = two_workers["url"], two_workers["pub"]
    assert isinstance(url, str) and isinstance(pub, Path)
    report = verify(url, "api", load_public_keys([pub]))
    assert report.ok, report.message
    predicts = [e for e in query(url, "api", limit=None) if e.action == "api.predict"]
    assert len(predicts) == codes[200] + other_codes[200]  # every answered call, audited
    assert "Traceback" not in proc.log_text()  # type: ignore[attr-defined]
    print(
        f"limited key: {dict(codes)} in {elapsed:.1f} s; other key: {dict(other_codes)}; "
        f"worker CPU s: {grew}"
    )
