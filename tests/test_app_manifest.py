"""Signed builds bind what they are: the manifest inside each signed FAB (app id, version,
expiry, key id, signed by the app-signing key) is forwarded by the relay and checked by the node
runtime, which refuses a forged, expired or older build (unless its owner allows older ones).

Fast tier: real FABs built by `publish_app`, a real runtime service, no processes.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from helpers.node import caller, node_config, settings, without_blocking

from atoll import pki
from client.node import NodeError
from client.runtime.app_check import VERSIONS_FILE, AppCheck, load_trusted_keys
from client.runtime.service import NodeService
from common import wire
from common.app_manifest import AppManifest, message
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from server.app_store import MANIFEST_PATH, AppStore, SigningKey, publish_app, signed_manifest

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningKey, Path]:
    files = pki.create_app_signing_key(tmp_path_factory.mktemp("keys"))
    return SigningKey.load(files.private_key), files.trusted_entities


def _manifest(key: SigningKey, version: str = "0.2.0", expires: float = NOW + 3600) -> AppManifest:
    return AppManifest(
        app_id="atoll/atoll",
        version=version,
        issued_at=int(NOW - 60),
        expires_at=int(expires),
        key_id=key.key_id,
    )


def _with(file_bytes: bytes) -> pb.RunSettings:
    raw = json.loads(file_bytes)
    return settings(
        app_manifest=raw[wire.MANIFEST],
        app_manifest_signature=bytes.fromhex(raw[wire.MANIFEST_SIGNATURE]),
    )


def _check(tmp: Path, trusted: Path, *, allow_older: bool = False, now: float = NOW) -> AppCheck:
    return AppCheck(load_trusted_keys(trusted), tmp, allow_older=allow_older, clock=lambda: now)


def _refusal(check: AppCheck, s: pb.RunSettings) -> str:
    with pytest.raises(NodeError) as err:
        check.admit(s)
    return err.value.code


def test_the_signed_fab_carries_a_manifest_the_node_accepts(
    tmp_path: Path, signing: tuple[SigningKey, Path]
) -> None:
    key, trusted = signing
    stored = publish_app(ROOT, tmp_path / "store", key, now=NOW)
    fab = AppStore(tmp_path / "store").fab(stored.fab_hash)
    assert fab is not None
    with zipfile.ZipFile(io.BytesIO(fab)) as z:
        inside = z.read(MANIFEST_PATH)
        content = z.read(".info/CONTENT").decode()  # Flower's per-file hashes cover it too
    assert f"{MANIFEST_PATH}," in content
    manifest = _check(tmp_path, trusted).admit(_with(inside))
    assert (manifest.app_id, manifest.version) == ("atoll/atoll", stored.version)
    assert manifest.expires_at > NOW and manifest.key_id == key.key_id
    # the source tree's placeholder is unsigned: a node that checks builds refuses it
    placeholder = (ROOT / MANIFEST_PATH).read_bytes()
    assert json.loads(placeholder)[wire.MANIFEST] == ""


def test_an_expired_build_is_refused(tmp_path: Path, signing: tuple[SigningKey, Path]) -> None:
    key, trusted = signing
    inside = signed_manifest(_manifest(key, expires=NOW - 3600), key)
    assert _refusal(_check(tmp_path, trusted), _with(inside)) == "app-expired"
    assert _refusal(_check(tmp_path, trusted, now=NOW - 3600), _with(inside)) == "app-expired"
    # within its validity it was fine
    assert _check(tmp_path, trusted, now=NOW - 3601).admit(_with(inside)).version == "0.2.0"


def test_an_older_build_is_refused_after_a_newer_ran_unless_the_owner_allows_it(
    tmp_path: Path, signing: tuple[SigningKey, Path]
) -> None:
    key, trusted = signing
    old = _with(signed_manifest(_manifest(key, "0.1.9"), key))
    new = _with(signed_manifest(_manifest(key, "0.10.0"), key))  # numeric, not text, order
    check = _check(tmp_path, trusted)
    assert check.admit(old).version == "0.1.9"
    assert check.admit(new).version == "0.10.0"
    assert check.admit(new).version == "0.10.0"  # the same build again is fine
    assert _refusal(check, old) == "app-older"
    # persisted in the node's state: a restarted runtime remembers (file is the owner's, 0600)
    assert _refusal(_check(tmp_path, trusted), old) == "app-older"
    assert json.loads((tmp_path / VERSIONS_FILE).read_text()) == {"atoll/atoll": "0.10.0"}
    assert os.stat(tmp_path / VERSIONS_FILE).st_mode & 0o077 == 0
    allowed = _check(tmp_path, trusted, allow_older=True)
    assert allowed.admit(old).version == "0.1.9"
    assert json.loads((tmp_path / VERSIONS_FILE).read_text()) == {"atoll/atoll": "0.10.0"}
    # a damaged record is not "nothing ran yet"
    (tmp_path / VERSIONS_FILE).write_text("{not json")
    assert _refusal(_check(tmp_path, trusted), old) == "app-versions"


def test_forged_or_missing_manifests_are_refused(
    tmp_path: Path, signing: tuple[SigningKey, Path]
) -> None:
    key, trusted = signing
    check = _check(tmp_path, trusted)
    good = _with(signed_manifest(_manifest(key, "0.3.0"), key))
    # altered after signing: a later expiry with the original signature
    later = _manifest(key, "0.3.0", expires=NOW + 10**8).model_dump_json()
    altered = settings(
        app_manifest=later, app_manifest_signature=good.app_manifest_signature
    )
    assert _refusal(check, altered) == "app-signature"
    # signed by another key that claims the trusted key's id
    other = SigningKey(key_id=key.key_id, private_key=ed25519.Ed25519PrivateKey.generate())
    assert _refusal(check, _with(signed_manifest(_manifest(key), other))) == "app-signature"
    # signed by another key under its own id (not installed by the owner)
    stranger = SigningKey(key_id="fpk_0123456789abcdef", private_key=other.private_key)
    forged = _manifest(key).model_copy(update={"key_id": stranger.key_id})
    assert _refusal(check, _with(signed_manifest(forged, stranger))) == "app-signature"
    # a signature over the bare text (no domain tag) is not a manifest signature
    bare = key.private_key.sign(good.app_manifest.encode())
    assert message(good.app_manifest) != good.app_manifest.encode()
    naked = settings(app_manifest=good.app_manifest, app_manifest_signature=bare)
    assert _refusal(check, naked) == "app-signature"
    assert _refusal(check, settings()) == "app-manifest-missing"
    junk = settings(app_manifest='{"app_id": 1}', app_manifest_signature=b"x")
    assert _refusal(check, junk) == "app-manifest-invalid"
    assert check.admit(good).version == "0.3.0"


def test_the_relay_forwards_its_own_manifest_never_the_coordinators(
    tmp_path: Path, signing: tuple[SigningKey, Path]
) -> None:
    key, _trusted = signing
    file = tmp_path / wire.APP_MANIFEST_FILE
    file.write_bytes(signed_manifest(_manifest(key), key))
    sent = settings(app_manifest="coordinator says", app_manifest_signature=b"sig")
    out = wire.with_manifest(sent, file)
    assert out.app_manifest == _manifest(key).text() and len(out.app_manifest_signature) == 64
    assert wire.with_manifest(sent, tmp_path / "absent.json").app_manifest == ""
    file.write_bytes((ROOT / MANIFEST_PATH).read_bytes())  # the unsigned placeholder
    assert wire.with_manifest(sent, file).app_manifest_signature == b""


def test_the_runtime_refuses_a_bad_build_before_anything_else(
    tmp_path: Path, signing: tuple[SigningKey, Path]
) -> None:
    key, trusted = signing
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)  # reading it would block: a refusal must come before any data access
    cfg = node_config(tmp_path, fifo).model_copy(update={"trusted_app_key": trusted})
    svc = NodeService(cfg, seed=5)
    expired = _with(signed_manifest(_manifest(key, expires=1000), key))
    for s, code in ((settings(), "app-manifest-missing"), (expired, "app-expired")):
        reply = without_blocking(
            lambda s=s: svc.rollcall(pb.RollCallRequest(caller=caller(), settings=s))  # type: ignore[misc]
        )
        assert reply.WhichOneof("outcome") == "refusal" and reply.refusal.code == code
        assert str(tmp_path) not in reply.refusal.message
    # analytics queries carry the manifest too, and are checked the same way
    query = without_blocking(lambda: svc.query(pb.QueryRequest(caller=caller())))
    assert query.WhichOneof("outcome") == "refusal"
    assert query.refusal.code == "app-manifest-missing"
    # the node.toml form round-trips the new keys
    assert "trusted-app-key" in cfg.to_toml() and "allow-older-app = false" in cfg.to_toml()
