"""A signed build's manifest: what the build is (app id, version) and until when it may run.

Flower's own FAB signature covers only `signed_at ‖ sha256(FAB)`: it never expires and does not
say which app or version it is, so an older signed build can be replayed. At publish the
coordinator puts this manifest, signed with the same app-signing key (Ed25519), inside the FAB
(`client/app_manifest.json`); Flower's trusted-entities check makes the FAB — and so the manifest
— authentic; the relay forwards it to the node runtime, which verifies the signature against the
key its owner installed and refuses an expired build or one older than the newest it has run
(`client/runtime/app_check.py`).

Shared by the coordinator (signs) and the node runtime (verifies); no flwr, no torch.
"""

from __future__ import annotations

import hashlib
import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import BaseModel, ConfigDict, Field

DOMAIN = b"atoll-app-manifest-v1\n"
VERSION_PATTERN = r"^\d{1,6}(\.\d{1,6}){0,3}$"


class AppManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    app_id: str = Field(min_length=1, max_length=200)  # "publisher/name"
    version: str = Field(pattern=VERSION_PATTERN)
    issued_at: int = Field(ge=0)  # Unix seconds
    expires_at: int = Field(ge=0)
    key_id: str = Field(min_length=1, max_length=100)  # the app-signing key's id (fpk_…)

    def text(self) -> str:
        """Canonical JSON: what is signed and what travels."""
        return json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))

    def version_key(self) -> tuple[int, ...]:
        return version_key(self.version)


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """A stable id for a publisher key: `fpk_` + the first 16 hex digits of its SHA-256 (the ids
    of the trusted-entities file nodes install)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"fpk_{hashlib.sha256(raw).hexdigest()[:16]}"


def version_key(version: str) -> tuple[int, ...]:
    """`"0.10.2"` → (0, 10, 2, 0): comparable, shorter versions padded with zeros."""
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (4 - len(parts)))


def message(manifest_text: str) -> bytes:
    """What the signature covers: a domain tag and the manifest's exact text."""
    return DOMAIN + manifest_text.encode()
