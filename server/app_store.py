"""Coordinator-signed apps: the store SuperNodes' `--trusted-entities` check can be satisfied from.

A SuperNode started with `--trusted-entities` (Ed25519 publisher keys) runs an app only if the FAB
carries a signature by one of those keys over `signed_at (8 bytes, big-endian) ‖ sha256(FAB)`.
In flwr 1.41 the SuperLink attaches signatures only to FABs it fetched from "the Hub" at
`$FLWR_SUPERGRID_API_URL/hub/fetch-fab`; a FAB submitted from a local directory never carries any.
This module is that endpoint, run on the coordinator host: the coordinator builds its app, signs
it with its own app-signing key (`publish`), and the SuperLink — started with
`FLWR_SUPERGRID_API_URL` pointing here — fetches the signed FAB for `flwr run @atoll/atoll==x.y.z`.

The store is not trusted: it only distributes. A node checks the signature against the key its
owner installed; a FAB altered in the store, or signed by any other key, is refused by the node.

Flower's signature binds no app id, version or expiry, so each build also carries a manifest
(`common.app_manifest`: app id, version, expires_at, key id) signed with the same key, written
into the FAB at `client/app_manifest.json`; node runtimes refuse expired or older builds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from flwr.cli.build import build_fab_from_files
from flwr.cli.utils import collect_files
from flwr.common.config import get_metadata_from_config
from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign
from pydantic import BaseModel

from common import wire
from common.app_manifest import AppManifest, key_id
from common.app_manifest import message as manifest_message

_HASH = re.compile(r"^[0-9a-f]{64}$")
INDEX = "index.json"
MANIFEST_PATH = f"client/{wire.APP_MANIFEST_FILE}"  # beside the relay, inside the FAB
APP_VALID_SECONDS = 30 * 24 * 3600  # a signed build runs on nodes for 30 days after publish


class Verification(BaseModel):
    """One publisher signature, in the shape Flower's Hub returns it."""

    public_key_id: str
    signature: str  # base64url, unpadded
    signed_at: int


class StoredApp(BaseModel):
    app_id: str  # "publisher/name", without Flower's leading "@"
    version: str
    fab_hash: str
    verifications: list[Verification]

    @property
    def spec(self) -> str:
        """What `flwr run` takes to start this exact app through the store."""
        return f"@{self.app_id}=={self.version}"


@dataclass(frozen=True)
class SigningKey:
    """The coordinator's app-signing key and the id nodes know it by."""

    key_id: str
    private_key: ed25519.Ed25519PrivateKey

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 key; make one with `atoll keys app-signing`")
        return cls(key_id=key_id(key.public_key()), private_key=key)


def trusted_entities_yaml(public_key: ed25519.Ed25519PublicKey) -> str:
    """The `--trusted-entities` file a node owner installs to run only apps this key signed."""
    openssh = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return f'{key_id(public_key)}: "{openssh} atoll-app-signing"\n'


def sign_fab(fab: bytes, key: SigningKey) -> Verification:
    """Sign exactly what a SuperNode verifies: signed_at ‖ sha256(FAB)."""
    at = int(time.time())
    sig = key.private_key.sign(create_message_to_sign(hashlib.sha256(fab).digest(), at))
    encoded = base64.urlsafe_b64encode(sig).decode().rstrip("=")
    return Verification(public_key_id=key.key_id, signature=encoded, signed_at=at)


class AppStore:
    """A directory of signed FABs: `fabs/<sha256>.fab` plus an index by app id and version."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()

    def _index(self) -> dict[str, StoredApp]:
        path = self.directory / INDEX
        if not path.exists():
            return {}
        return {k: StoredApp.model_validate(v) for k, v in json.loads(path.read_text()).items()}

    def publish(self, fab: bytes, app_id: str, version: str, key: SigningKey) -> StoredApp:
        """Sign `fab` and make it what `@app_id==version` resolves to (replacing older builds)."""
        fab_hash = hashlib.sha256(fab).hexdigest()
        (self.directory / "fabs").mkdir(parents=True, exist_ok=True)
        (self.directory / "fabs" / f"{fab_hash}.fab").write_bytes(fab)
        stored = StoredApp(
            app_id=app_id.lstrip("@"),
            version=version,
            fab_hash=fab_hash,
            verifications=[sign_fab(fab, key)],
        )
        index = self._index()
        index[f"{stored.app_id}=={version}"] = stored
        tmp = self.directory / f"{INDEX}.tmp"
        tmp.write_text(json.dumps({k: v.model_dump() for k, v in index.items()}, indent=2))
        tmp.replace(self.directory / INDEX)  # atomic: the store never serves a half-written index
        return stored

    def lookup(self, app_id: str, version: str | None) -> StoredApp | None:
        index = self._index()
        if version is not None:
            return index.get(f"{app_id.lstrip('@')}=={version}")
        matches = [v for v in index.values() if v.app_id == app_id.lstrip("@")]
        return max(matches, key=lambda a: tuple(int(p) for p in a.version.split(".")), default=None)

    def fab(self, fab_hash: str) -> bytes | None:
        path = self.directory / "fabs" / f"{fab_hash}.fab"
        return path.read_bytes() if _HASH.match(fab_hash) and path.exists() else None


def signed_manifest(manifest: AppManifest, key: SigningKey) -> bytes:
    """The manifest file the relay reads: the manifest's text and its signature (hex)."""
    text = manifest.text()
    signature = key.private_key.sign(manifest_message(text)).hex()
    return json.dumps({wire.MANIFEST: text, wire.MANIFEST_SIGNATURE: signature}).encode()


def publish_app(
    app_dir: Path,
    store_dir: Path,
    key: SigningKey,
    *,
    valid_seconds: int = APP_VALID_SECONDS,
    now: float | None = None,
) -> StoredApp:
    """Build the app in `app_dir` as `flwr run` would, with its signed manifest (valid for
    `valid_seconds`) inside, sign the FAB, put it in the store."""
    config = tomllib.loads((app_dir / "pyproject.toml").read_text())
    app_id, version = get_metadata_from_config(config)
    issued = int(time.time() if now is None else now)
    manifest = AppManifest(
        app_id=app_id.lstrip("@"),
        version=version,
        issued_at=issued,
        expires_at=issued + valid_seconds,
        key_id=key.key_id,
    )
    files: dict[str, bytes | Path] = {**collect_files(app_dir.expanduser().resolve())}
    files[MANIFEST_PATH] = signed_manifest(manifest, key)
    include = config.get("tool", {}).get("flwr", {}).get("app", {}).get("fab-include")
    if isinstance(include, list) and MANIFEST_PATH not in include:
        # the app lists what its FAB holds: the manifest must be in it too (Flower writes the
        # FAB's pyproject.toml from the parsed config anyway)
        include.append(MANIFEST_PATH)
        files["pyproject.toml"] = tomli_w.dumps(config).encode()
    fab, _format = build_fab_from_files(files)
    return AppStore(store_dir).publish(fab, app_id, version, key)


class FetchFabRequest(BaseModel):
    app_id: str
    app_version: str | None = None
    flwr_version: str | None = None


def create_store_app(directory: Path) -> FastAPI:
    """The two Hub routes the SuperLink calls: resolve an app to a signed FAB, then download it."""
    store = AppStore(directory)
    api = FastAPI(title="Atoll app store", docs_url=None, redoc_url=None, openapi_url=None)

    @api.post("/v1/hub/fetch-fab")
    def fetch_fab(body: FetchFabRequest, request: Request) -> dict[str, object]:
        app = store.lookup(body.app_id, body.app_version)
        if app is None:
            raise HTTPException(404, f"{body.app_id}=={body.app_version} is not in this store")
        return {
            "fab_url": str(request.url_for("download", fab_hash=app.fab_hash)),
            "verifications": [v.model_dump() for v in app.verifications],
        }

    @api.get("/v1/fabs/{fab_hash}.fab", name="download")
    def download(fab_hash: str) -> Response:
        content = store.fab(fab_hash)
        if content is None:
            raise HTTPException(404, "no such FAB")
        return Response(content, media_type="application/octet-stream")

    return api
