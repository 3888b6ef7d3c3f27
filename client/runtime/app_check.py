"""Which signed builds this node runs: authentic, unexpired, and not older than the newest it ran.

The relay forwards the build manifest that ships inside the signed FAB (`common.app_manifest`)
with every request. With `trusted-app-key` set in node.toml (the coordinator's trusted-entities
file, or its OpenSSH public key) the runtime checks, before anything else:

- the manifest is there and well formed (`app-manifest-missing`, `app-manifest-invalid`);
- it is signed by a key the owner installed (`app-signature`): a forged or re-signed manifest,
  or one naming another key, is refused;
- it has not expired (`app-expired`);
- its version is not older than the newest version of that app this node has already run
  (`app-older`), unless the owner set `allow-older-app = true`. The newest version is kept in the
  node's state directory (`app-versions.json`, 0600).

Refusals carry codes, app ids and versions only (public facts the coordinator published).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from client.node import NodeError
from common.app_manifest import AppManifest, key_id, message, version_key
from common.files import write_private
from common.protos.atoll.node.v1 import runtime_pb2 as pb

VERSIONS_FILE = "app-versions.json"
log = logging.getLogger(__name__)


def load_trusted_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """{key id: key} from a trusted-entities YAML (`fpk_…: "ssh-ed25519 AAAA… comment"`) or a
    single OpenSSH public key line (its id computed as the coordinator computes it)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise NodeError("node-config", f"trusted-app-key {path}: {err.strerror}") from None
    entries: Mapping[object, object]
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        loaded = None
    entries = loaded if isinstance(loaded, dict) else {None: text.strip()}
    keys: dict[str, Ed25519PublicKey] = {}
    for name, value in entries.items():
        try:
            key = serialization.load_ssh_public_key(str(value).encode())
        except (ValueError, TypeError):
            raise NodeError(
                "node-config", f"trusted-app-key {path}: an entry is not an OpenSSH public key"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise NodeError("node-config", f"trusted-app-key {path}: an entry is not Ed25519")
        keys[str(name) if name is not None else key_id(key)] = key
    if not keys:
        raise NodeError("node-config", f"trusted-app-key {path} holds no key")
    return keys


class AppCheck:
    """Decides each request's build; remembers the newest version run per app id."""

    def __init__(
        self,
        trusted: Mapping[str, Ed25519PublicKey],
        state_dir: Path,
        *,
        allow_older: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.trusted = dict(trusted)
        self.path = state_dir / VERSIONS_FILE
        self.allow_older = allow_older
        self._clock = clock
        self._lock = threading.Lock()

    def _newest(self) -> dict[str, str]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            # a damaged record must not become "nothing ran yet" (that would re-admit old builds)
            raise NodeError(
                "app-versions", "the node's record of app versions is unreadable"
            ) from None
        return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def admit(self, settings: pb.RunSettings | pb.QueryRequest) -> AppManifest:
        """The request's verified manifest, or a refusal (NodeError with its code)."""
        if not settings.app_manifest or not settings.app_manifest_signature:
            raise NodeError(
                "app-manifest-missing",
                "the app build carries no signed manifest; this node runs only builds the "
                "coordinator published with `atoll run --signing-key`",
            )
        try:
            manifest = AppManifest.model_validate_json(settings.app_manifest)
        except ValidationError:
            raise NodeError("app-manifest-invalid", "the build's manifest is malformed") from None
        key = self.trusted.get(manifest.key_id)
        try:
            if key is None:
                raise InvalidSignature
            key.verify(bytes(settings.app_manifest_signature), message(settings.app_manifest))
        except InvalidSignature:
            raise NodeError(
                "app-signature",
                "the app build's manifest is not signed by a key this node's owner trusts",
            ) from None
        shown = f"{manifest.app_id} {manifest.version}"
        if self._clock() >= manifest.expires_at:
            raise NodeError(
                "app-expired", f"app build {shown} has expired; the coordinator must publish anew"
            )
        with self._lock:
            newest = self._newest()
            seen = newest.get(manifest.app_id)
            if seen is not None and manifest.version_key() < version_key(seen):
                if not self.allow_older:
                    raise NodeError(
                        "app-older",
                        f"app build {shown} is older than {seen}, the newest this node has run "
                        "(its owner can set allow-older-app = true)",
                    )
            elif seen != manifest.version:
                newest[manifest.app_id] = manifest.version
                write_private(self.path, json.dumps(newest, sort_keys=True))
                log.info("newest build of %s is now %s", manifest.app_id, manifest.version)
        return manifest
