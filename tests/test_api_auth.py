"""API keys, roles and input limits of the scoring API.

The route x role table is the access policy as tests see it: every route of the app must be in it
(a new router fails `test_table_covers_every_route` until its row is added), allowed roles get the
route's success status, every other role gets the same 403, and bad credentials the same 401.
The last tests run `atoll serve` as a real HTTPS process and push oversized bodies at it.
"""

from __future__ import annotations

import itertools
import json
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from helpers.api import RECORD, logreg_weights, publish, publisher_pub
from typer.testing import CliRunner

from atoll import pki
from atoll.cli import app as atoll_cli
from atoll.cli_keys import keys_app
from atoll.processes import ManagedProcess, flower_env, free_port, spawn, wait_for_port
from common.db import default_registry_url
from server.api.app import create_app
from server.api.auth import (
    FORBIDDEN_DETAIL,
    PUBLIC_PATHS,
    ROLE_PERMISSIONS,
    UNAUTHORIZED_DETAIL,
    ApiKeyError,
    ApiKeyStore,
    Permission,
    Role,
    Unauthenticated,
    api_routes,
    parse_key,
    require,
    roles_with,
    unguarded_routes,
)
from server.api.limits import DEFAULT_MAX_BODY_BYTES, TokenBucketLimiter
from server.registry import Registry

P = Permission


@dataclass(frozen=True)
class Case:
    """One route of the access table: a concrete request and what success looks like."""

    url: str
    permission: Permission
    body: dict[str, Any] | None = None
    ok: int = 200


# (method, route path) -> request. Add a row for every new route (budgets, audit, keys, ...).
TABLE: dict[tuple[str, str], Case] = {
    ("GET", "/models"): Case("/models", P.MODELS_READ),
    ("GET", "/models/{name}"): Case("/models/toy", P.MODELS_READ),
    ("GET", "/models/{name}/versions/{version}"): Case(
        "/models/toy/versions/latest", P.MODELS_READ
    ),
    ("POST", "/models/{name}/predict"): Case(
        "/models/toy/predict", P.MODELS_SCORE, {"records": [RECORD]}
    ),
    ("POST", "/models/{name}/versions/{version}/predict"): Case(
        "/models/toy/versions/1/predict", P.MODELS_SCORE, {"records": [RECORD]}
    ),
    ("GET", "/budgets"): Case("/budgets", P.BUDGETS_READ),
    ("GET", "/budgets/{node}"): Case("/budgets/node-1", P.BUDGETS_READ, ok=404),
    ("GET", "/runs/{run_id}/privacy"): Case("/runs/1/privacy", P.BUDGETS_READ, ok=404),
    ("GET", "/audit"): Case("/audit?log=api", P.AUDIT_READ),
    ("GET", "/audit/export"): Case("/audit/export?log=api", P.AUDIT_READ),
    ("GET", "/audit/verify"): Case("/audit/verify?log=api", P.AUDIT_READ),
    ("POST", "/queries/preview"): Case(
        "/queries/preview", P.QUERIES_RUN, {"model": "toy", "spec": {"kind": "count", "epsilon": 1}}
    ),
    ("POST", "/queries"): Case("/queries", P.QUERIES_RUN, {"model": "toy", "spec": {}}, ok=422),
    ("GET", "/queries"): Case("/queries", P.QUERIES_RUN),
    ("GET", "/queries/{query_id}"): Case("/queries/1", P.QUERIES_RUN, ok=404),
    ("GET", "/queries/{query_id}/export"): Case("/queries/1/export", P.QUERIES_RUN, ok=404),
    ("GET", "/queries/submissions/{submission_id}"): Case(
        "/queries/submissions/1", P.QUERIES_RUN, ok=404
    ),
    ("GET", "/models/{name}/drift"): Case("/models/toy/drift", P.MODELS_READ),
}
# Not API routes but still not public: any valid key may read the API's own description.
ANY_KEY = ("/openapi.json", "/docs")


@dataclass
class Api:
    client: TestClient
    url: str
    keys: dict[Role, str]
    store: ApiKeyStore
    extra: dict[str, str] = field(default_factory=dict)

    def as_(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key is not None else {}


def _registry(tmp: Path) -> str:
    url = f"sqlite:///{tmp / 'registry.db'}"
    with Registry(url) as registry:
        publish(registry, "toy", "logreg", logreg_weights([1.0, 0, 0, 0, 0, 0], 0.0))
    return url


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    url = _registry(tmp_path_factory.mktemp("auth"))
    store = ApiKeyStore.open(url)
    keys = {role: store.create(f"test-{role}", role)[1] for role in Role}
    app = create_app(
        url,
        registry_public_keys=[publisher_pub()],
        rate_per_second=1000,
        rate_burst=1000,
        client_rate_per_second=1000,  # this module sends hundreds of bad keys on purpose
        client_rate_burst=1000,
    )
    with TestClient(app) as client:
        yield Api(client, url, keys, store)
    store.close()


# ---- the table ---------------------------------------------------------------------------------


def test_table_covers_every_route(api: Api) -> None:
    app: FastAPI = api.client.app  # type: ignore[assignment]
    served = {
        (method, r.path): r.permissions
        for r in api_routes(app)
        if r.path not in PUBLIC_PATHS
        for method in r.methods
    }
    assert set(served) == set(TABLE), "add the new route to TABLE in this file"
    for key, perms in served.items():
        assert perms == {TABLE[key].permission}, key
    assert unguarded_routes(app) == []


@pytest.mark.parametrize(("route", "role"), list(itertools.product(TABLE, Role)))
def test_route_by_role(api: Api, route: tuple[str, str], role: Role) -> None:
    case = TABLE[route]
    r = api.client.request(route[0], case.url, json=case.body, headers=api.as_(api.keys[role]))
    if role in roles_with(case.permission):
        assert r.status_code == case.ok, r.text
    else:
        assert r.status_code == 403
        assert r.json() == {"detail": FORBIDDEN_DETAIL}


def test_least_privilege_matrix() -> None:
    """The policy the README documents; changing it must be deliberate."""
    assert {r.value: sorted(p.value for p in ps) for r, ps in ROLE_PERMISSIONS.items()} == {
        "app": ["models:score"],
        "analyst": ["models:read", "queries:run"],
        "governance": ["audit:read", "budgets:read", "models:read"],
        "admin": ["keys:manage", "policy:write"],
    }


@pytest.mark.parametrize("path", ANY_KEY)
def test_docs_need_any_valid_key(api: Api, path: str) -> None:
    assert api.client.get(path).status_code == 401
    for key in api.keys.values():
        assert api.client.get(path, headers=api.as_(key)).status_code == 200


def test_health_is_public(api: Api) -> None:
    assert api.client.get("/health").json()["status"] == "ok"


# ---- 401: every failure looks the same ---------------------------------------------------------


def _bad_credentials(api: Api) -> dict[str, dict[str, str]]:
    real = api.keys[Role.ADMIN]
    key_id, secret = parse_key(real) or ("", "")
    revoked_key = api.store.create("to-revoke", "admin")[1]
    api.store.revoke(parse_key(revoked_key)[0])  # type: ignore[index]
    old_key = api.store.create("to-rotate", "admin")[1]
    api.store.rotate(parse_key(old_key)[0])  # type: ignore[index]
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    return {
        "none": {},
        "empty bearer": {"Authorization": "Bearer "},
        "other scheme": {"Authorization": f"Basic {real}"},
        "malformed": {"Authorization": "Bearer not-a-key"},
        "unknown id": {"Authorization": f"Bearer atoll_{'0' * 12}_{secret}"},
        "wrong secret": {"Authorization": f"Bearer atoll_{key_id}_{flipped}"},
        "revoked": {"Authorization": f"Bearer {revoked_key}"},
        "rotated out": {"Authorization": f"Bearer {old_key}"},
    }


def test_bad_credentials_get_one_identical_401(api: Api) -> None:
    urls = [(m, c.url, c.body) for (m, _), c in TABLE.items()]
    urls += [("GET", "/models/ghost", None), ("GET", "/no/such/route", None)]
    urls += [("DELETE", "/models", None), ("GET", "/openapi.json", None)]
    seen = set()
    for (label, headers), (method, url, body) in itertools.product(
        _bad_credentials(api).items(), urls
    ):
        r = api.client.request(method, url, json=body, headers=headers)
        assert r.status_code == 401, (label, method, url)
        assert r.headers["www-authenticate"] == 'Bearer realm="atoll"'
        seen.add(r.content)
    assert seen == {json.dumps({"detail": UNAUTHORIZED_DETAIL}, separators=(",", ":")).encode()}


def test_unauthenticated_body_is_never_parsed(api: Api) -> None:
    r = api.client.post(
        "/models/toy/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 401


# ---- the key store -----------------------------------------------------------------------------


def test_only_salted_hashes_are_stored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with ApiKeyStore.open(url) as store:
        keys = [store.create(f"k{i}", "app")[1] for i in range(3)]
        principal = store.authenticate(keys[0])
        assert (principal.role, principal.name) == (Role.APP, "k0")
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # database, WAL and all
    for key in keys:
        key_id, secret = parse_key(key)  # type: ignore[misc]
        assert key_id.encode() in raw  # we are looking at the right bytes
        assert secret.encode() not in raw and key.encode() not in raw
    import sqlite3

    with sqlite3.connect(tmp_path / "keys.db") as conn:
        salts = [row[0] for row in conn.execute("SELECT salt FROM api_keys")]
        hashes = [row[0] for row in conn.execute("SELECT secret_hash FROM api_keys")]
    assert len(set(salts)) == 3 and all(len(s) == 16 for s in salts)
    assert len(set(hashes)) == 3 and all(len(h) == 64 for h in hashes)


def test_rotate_and_revoke(tmp_path: Path) -> None:
    with ApiKeyStore.open(f"sqlite:///{tmp_path / 'k.db'}") as store:
        info, old = store.create("crm", "app")
        rotated, new = store.rotate(info.key_id)
        assert (rotated.key_id, rotated.role, rotated.name) == (info.key_id, "app", "crm")
        assert rotated.rotated_at is not None and new != old
        with pytest.raises(Unauthenticated):
            store.authenticate(old)
        assert store.authenticate(new).key_id == info.key_id
        store.revoke(info.key_id)
        with pytest.raises(Unauthenticated, match="revoked"):
            store.authenticate(new)
        with pytest.raises(ApiKeyError, match="was revoked .* create a new key"):
            store.rotate(info.key_id)
        with pytest.raises(ApiKeyError, match="no API key with id 'nope'; `atoll apikey list`"):
            store.revoke("nope")
        [listed] = store.list_keys()
        assert not listed.active and listed.revoked_at is not None


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database on each backend the registry supports (see test_registry.py)."""
    if request.param == "sqlite":
        yield default_registry_url(tmp_path / "nested" / "home")
    else:
        yield request.getfixturevalue("postgres_url")


def test_key_lifecycle_on_sqlite_and_postgresql(backend_url: str) -> None:
    """The same migration (0002) and store on both backends."""
    with ApiKeyStore.open(backend_url) as store:
        info, key = store.create("crm", "governance")
        assert store.authenticate(key).role is Role.GOVERNANCE
        _rotated, new = store.rotate(info.key_id)
        store.revoke(info.key_id)
        [listed] = store.list_keys()
        assert listed.created_at.tzinfo is not None and listed.revoked_at is not None
        for presented in (key, new):
            with pytest.raises(Unauthenticated):
                store.authenticate(presented)


def test_every_key_change_goes_through_the_audit_hook_first(tmp_path: Path) -> None:
    events: list[tuple[str, str]] = []
    url = f"sqlite:///{tmp_path / 'k.db'}"
    with ApiKeyStore.open(url, on_event=lambda a, i: events.append((a, i.key_id))) as store:
        info, key = store.create("crm", "app")
        store.rotate(info.key_id)
        store.revoke(info.key_id)
    assert events == [(a, info.key_id) for a in ("created", "rotated", "revoked")]

    def refuse(_action: str, _info: object) -> None:
        raise RuntimeError("audit log unavailable")

    with ApiKeyStore.open(url, on_event=refuse) as store:
        with pytest.raises(RuntimeError):
            store.create("other", "app")
        other, other_key = ApiKeyStore(store.engine).create("other", "app")
        with pytest.raises(RuntimeError):
            store.revoke(other.key_id)
        with pytest.raises(RuntimeError):
            store.rotate(other.key_id)
        assert [k.name for k in store.list_keys()] == ["crm", "other"]  # nothing unrecorded
        assert store.authenticate(other_key).key_id == other.key_id  # neither revoked nor rotated


def test_invalid_role_name_and_permission_are_refused(tmp_path: Path) -> None:
    with ApiKeyStore.open(f"sqlite:///{tmp_path / 'k.db'}") as store:
        with pytest.raises(ApiKeyError, match="unknown role 'root': use one of app, analyst"):
            store.create("x", "root")
        with pytest.raises(ApiKeyError, match="key name must be"):
            store.create("", "app")
    with pytest.raises(ValueError, match="unknown permission 'budget:read'"):
        require("budget:read")


def test_a_route_without_permission_is_reported(api: Api) -> None:
    app = FastAPI()
    app.add_api_route("/open", lambda: 1)
    app.add_api_route("/guarded", lambda: 1, dependencies=[Depends(require("audit:read"))])
    assert unguarded_routes(app) == ["GET /open"]


# ---- the CLI -----------------------------------------------------------------------------------


def test_cli_create_list_rotate_revoke(tmp_path: Path) -> None:
    runner = CliRunner()
    reg = ["--registry", f"sqlite:///{tmp_path / 'registry.db'}"]
    created = runner.invoke(keys_app, ["create", "--name", "crm", "--role", "app", *reg])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    key_id, secret = parse_key(key)  # type: ignore[misc]
    assert key_id in created.stderr and secret not in created.stderr

    listed = runner.invoke(keys_app, ["list", "--json", *reg])
    assert listed.exit_code == 0 and secret not in listed.output
    [row] = json.loads(listed.stdout)
    assert (row["key_id"], row["role"], row["active"]) == (key_id, "app", True)

    rotated = runner.invoke(keys_app, ["rotate", key_id, *reg])
    assert rotated.exit_code == 0 and parse_key(rotated.stdout.strip())[0] == key_id  # type: ignore[index]
    assert rotated.stdout.strip() != key

    assert runner.invoke(keys_app, ["revoke", key_id, *reg]).exit_code == 0
    again = runner.invoke(keys_app, ["revoke", key_id, *reg])
    assert again.exit_code == 2 and "was revoked" in again.stderr
    table = runner.invoke(keys_app, ["list", *reg])
    assert "revoked" in table.stdout and secret not in table.stdout

    bad = runner.invoke(keys_app, ["create", "--name", "x", "--role", "root", *reg])
    assert bad.exit_code == 2 and "root" in bad.stderr


# ---- input limits ------------------------------------------------------------------------------


def test_rate_limit_per_key(tmp_path: Path) -> None:
    url = _registry(tmp_path)
    with ApiKeyStore.open(url) as store:
        one, two = store.create("one", "analyst")[1], store.create("two", "analyst")[1]
    app = create_app(url, registry_public_keys=[publisher_pub()], rate_per_second=0.2, rate_burst=3)
    with TestClient(app) as client:
        codes = [
            client.get("/models", headers={"Authorization": f"Bearer {one}"}) for _ in range(4)
        ]
        assert [r.status_code for r in codes] == [200, 200, 200, 429]
        assert int(codes[-1].headers["retry-after"]) >= 1
        assert "rate limit of this API key exceeded" in codes[-1].json()["detail"]
        # another key has its own bucket
        assert client.get("/models", headers={"Authorization": f"Bearer {two}"}).status_code == 200


def test_token_bucket_refills() -> None:
    bucket = TokenBucketLimiter(rate=2.0, burst=2)
    assert bucket.take("k", now=0.0) == 0 and bucket.take("k", now=0.0) == 0
    assert bucket.take("k", now=0.0) == pytest.approx(0.5)
    assert bucket.take("k", now=0.5) == 0  # one token back after 1/rate seconds
    assert bucket.take("other", now=0.5) == 0


def test_declared_oversize_body_is_413_before_parsing(api: Api) -> None:
    body = b"x" * (DEFAULT_MAX_BODY_BYTES + 1)
    r = api.client.post(
        "/models/toy/predict",
        content=body,
        headers={**api.as_(api.keys[Role.APP]), "content-type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["detail"].startswith("request body is larger than the limit of 1048576 bytes")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 422),
        (b'{"records": [' * 5000, 400),  # deeply nested and unterminated: parser gives up
        (b"[" * 100_000 + b"]" * 100_000, 400),  # parser recursion limit
        ('{"records": [{"tenure": "\udcff"}]}'.encode("utf-8", "surrogatepass"), 422),
        (b"\xff\xfe\x00", 400),
        (b"", 422),
        (b"null", 422),
        (b'{"records": [[]]}', 422),
        (b'{"records": [{"tenure": 1e999}]}', 422),
    ],
)
def test_malformed_bodies_are_4xx(api: Api, body: bytes, status: int) -> None:
    r = api.client.post(
        "/models/toy/predict",
        content=body,
        headers={**api.as_(api.keys[Role.APP]), "content-type": "application/json"},
    )
    assert r.status_code == status, r.text[:300]


# ---- the real process: HTTPS, chunked uploads ------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("served")
    url = _registry(work)
    with ApiKeyStore.open(url) as store:
        key = store.create("crm", "app")[1]
    tls = pki.create_tls(work / "certs")
    port = free_port()
    argv = [sys.executable, "-m", "atoll", "serve", "--registry", url, "--port", str(port)]
    argv += ["--registry-public-key", str(publisher_pub())]
    argv += ["--certfile", str(tls.server_cert), "--keyfile", str(tls.server_key)]
    proc: ManagedProcess = spawn("api", argv, work / "api.log", flower_env())
    try:
        wait_for_port(port, timeout=60, proc=proc)
        ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=30) as c:
            yield {"client": c, "key": key, "port": port, "proc": proc, "tls": tls}
    finally:
        proc.stop()


def test_https_serves_and_plain_http_is_refused(served: dict[str, Any]) -> None:
    client: httpx.Client = served["client"]
    assert client.get("/health").json()["status"] == "ok"
    r = client.post(
        "/models/toy/predict",
        json={"records": [RECORD]},
        headers={"Authorization": f"Bearer {served['key']}"},
    )
    assert r.status_code == 200, r.text
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{served['port']}/health", timeout=5)


def _tls_socket(served: dict[str, Any]) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(served["tls"].ca_cert))
    raw = socket.create_connection(("127.0.0.1", served["port"]), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_chunked_oversize_body_is_cut_off(served: dict[str, Any]) -> None:
    """No Content-Length: the limit counts bytes as they arrive and answers 413 mid-upload."""
    chunk = b" " * 65536
    with _tls_socket(served) as sock:
        sock.sendall(
            b"POST /models/toy/predict HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n"
            + f"Authorization: Bearer {served['key']}\r\n\r\n".encode()
        )
        for _ in range(DEFAULT_MAX_BODY_BYTES // len(chunk) + 2):  # past the limit, unfinished
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert b"larger than the limit of 1048576 bytes" in body
    client: httpx.Client = served["client"]
    assert served["proc"].alive and client.get("/health").status_code == 200
    assert "Traceback" not in served["proc"].log_text()


def test_half_sent_request_does_not_hang_the_server(served: dict[str, Any]) -> None:
    """A client that declares a body and never sends it ties up one connection, not the API."""
    with _tls_socket(served) as tls_sock:
        tls_sock.sendall(
            b"POST /models/toy/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            + f"Authorization: Bearer {served['key']}\r\n\r\n".encode()
        )
        t0 = time.monotonic()
        assert served["client"].get("/health").status_code == 200
        assert time.monotonic() - t0 < 5


def test_serve_needs_both_tls_files(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        atoll_cli, ["serve", "--registry", "sqlite://", "--certfile", str(tmp_path / "c.pem")]
    )
    assert res.exit_code == 2
    assert "give both --certfile and --keyfile" in res.output
