"""The app store and signing, against Flower's own fetch and verification code.

A real uvicorn server serves the store; Flower's `_get_remote_fab` (what the SuperLink runs for
`flwr run @atoll/atoll==x.y.z`) fetches from it, and Flower's `_verify_fab` (what a SuperNode
with `--trusted-entities` runs) decides. The multi-process version is in test_zero_trust.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
import yaml
from fastapi.testclient import TestClient
from flwr.supercore.fab import Fab
from flwr.superlink.servicer.control import control_handlers
from flwr.supernode.start_client_internal import _verify_fab

from atoll import pki
from atoll.processes import free_port
from atoll.runs import APP_DIR
from server.app_store import AppStore, SigningKey, create_store_app, publish_app


@pytest.fixture
def signing(tmp_path: Path) -> tuple[SigningKey, dict[str, str]]:
    files = pki.create_app_signing_key(tmp_path / "signing")
    assert files.private_key.stat().st_mode & 0o777 == 0o600
    entities = yaml.safe_load(files.trusted_entities.read_text())
    return SigningKey.load(files.private_key), entities


@pytest.fixture
def store_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_store_app(tmp_path / "store"), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "store did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _other_entities(tmp_path: Path) -> dict[str, str]:
    files = pki.create_app_signing_key(tmp_path / "other")
    return dict(yaml.safe_load(files.trusted_entities.read_text()))


@pytest.fixture
def hub(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SuperLink's view: its "Hub" is our store (what FLWR_SUPERGRID_API_URL does)."""
    monkeypatch.setattr(control_handlers, "FLWR_SUPERGRID_API_URL", f"{store_url}/v1")


def _fetch(spec: str, fab_hash: str) -> Fab:
    """What the SuperLink does for `flwr run SPEC`: the FAB and its verification records."""
    content, verifications, _note = control_handlers._get_remote_fab(None, spec)
    return Fab(fab_hash, content, verifications)


@pytest.mark.usefixtures("hub")
def test_flower_fetches_and_nodes_accept_the_signed_build(
    tmp_path: Path, signing: tuple[SigningKey, dict[str, str]]
) -> None:
    key, entities = signing
    stored = publish_app(APP_DIR, tmp_path / "store", key)
    assert stored.spec == "@atoll/atoll==0.1.0"
    fab = _fetch(stored.spec, stored.fab_hash)
    assert fab.verifications["valid_license"]  # what a node checks first
    assert _verify_fab(fab, entities)
    assert not _verify_fab(fab, _other_entities(tmp_path))  # another publisher's node refuses


@pytest.mark.usefixtures("hub")
def test_a_fab_altered_in_the_store_is_refused(
    tmp_path: Path, signing: tuple[SigningKey, dict[str, str]]
) -> None:
    key, entities = signing
    stored = publish_app(APP_DIR, tmp_path / "store", key)
    path = tmp_path / "store" / "fabs" / f"{stored.fab_hash}.fab"
    path.write_bytes(path.read_bytes() + b"\0")  # the store is not trusted
    assert not _verify_fab(_fetch(stored.spec, stored.fab_hash), entities)


@pytest.mark.usefixtures("hub")
def test_unknown_apps_and_bad_paths_are_404(
    tmp_path: Path, signing: tuple[SigningKey, dict[str, str]]
) -> None:
    publish_app(APP_DIR, tmp_path / "store", signing[0])
    with pytest.raises(control_handlers.FlowerError):
        control_handlers._get_remote_fab(None, "@atoll/atoll==9.9.9")
    client = TestClient(create_store_app(tmp_path / "store"))
    assert client.get("/v1/fabs/..%2Findex.json.fab").status_code == 404
    assert client.get("/v1/fabs/" + "0" * 64 + ".fab").status_code == 404
    missing = client.post("/v1/hub/fetch-fab", json={"app_id": "@evil/app", "app_version": "1.0.0"})
    assert missing.status_code == 404 and "not in this store" in missing.json()["detail"]


def test_republishing_replaces_the_build_and_keeps_every_fab(
    tmp_path: Path, signing: tuple[SigningKey, dict[str, str]]
) -> None:
    key, entities = signing
    store = AppStore(tmp_path / "store")
    first = store.publish(b"build one", "atoll/atoll", "0.1.0", key)
    second = store.publish(b"build two", "atoll/atoll", "0.1.0", key)
    found = store.lookup("@atoll/atoll", "0.1.0")
    assert found is not None and found.fab_hash == second.fab_hash != first.fab_hash
    assert store.fab(first.fab_hash) == b"build one"  # a run already started can still fetch it
    latest = store.lookup("atoll/atoll", None)
    assert latest is not None and latest.fab_hash == second.fab_hash


def test_only_ed25519_keys_sign(tmp_path: Path) -> None:
    private, _public = pki.create_node_key(tmp_path, "node")  # ECDSA: for node auth, not apps
    with pytest.raises(ValueError, match="not an Ed25519 key"):
        SigningKey.load(private)
