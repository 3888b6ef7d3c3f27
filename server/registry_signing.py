"""Registry rows prove themselves: each published version is signed by the coordinator's
publishing key (Ed25519), and readers verify against public keys pinned in their own settings.

A row's `weights_sha256` alone is an unkeyed hash: whoever can write the database can swap the
weights and recompute it. The signature covers the whole model card (name, version, task, model
kind, metrics, participants, privacy, run, created_at and weights_sha256 — so the weights, through
their hash), and the SHA-256 of the stored contract text, under a domain tag so that no other
signature the key makes can pass for a row's. A reader that finds a row whose signature does not
verify refuses that row (and only that row).

The publishing key is a PEM Ed25519 key like the audit keys (`privacy.audit.AuditSigner`: 0600,
`.pub` beside it for the verifiers' configuration); the private key lives only on the coordinator
host (`server.coordinator_settings`), the public key is pinned in the API's settings
(`server.api.settings.ApiSettings.registry_public_keys`) and in the CLI's options.
"""

from __future__ import annotations

import decimal
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.errors import AtollError
from privacy.audit import AuditKeyError, AuditSigner, canonical_json, load_public_key
from privacy.audit import load_public_keys as _load_pems

DOMAIN = b"atoll-registry-row-v1\n"
_EXACT = decimal.Context(prec=2000)  # numbers are compared exactly, never rounded


class RegistryKeyError(AtollError, ValueError):
    """A publishing or pinned registry key is missing or unusable; the message says what to do."""


def _normalised(value: Any) -> Any:
    """The same value whatever JSON store it came back from, encoded injectively: PostgreSQL's
    JSONB gives 5.0 back as 5 and 1e20 as 100000000000000000000, so every number becomes its
    exact decimal value in normal form ("n:1E+20"), every string "s:..."."""
    if isinstance(value, dict):
        return {str(k): _normalised(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalised(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        number = decimal.Decimal(repr(value) if isinstance(value, float) else value)
        return f"n:{number.normalize(_EXACT)}"
    return f"s:{value}"


def row_message(card: Mapping[str, Any], contract_json: str) -> bytes:
    """What a row's signature covers: the card (as JSON) and the SHA-256 of the contract text."""
    body = {
        "card": _normalised(dict(card)),
        "contract_sha256": hashlib.sha256(contract_json.encode()).hexdigest(),
    }
    return DOMAIN + canonical_json(body).encode()


def sign_row(signer: AuditSigner, card: Mapping[str, Any], contract_json: str) -> str:
    """The row's signature, hex."""
    return signer.sign(row_message(card, contract_json)).hex()


class RowVerifier:
    """Verifies rows against the pinned public keys (several while a key is being rotated)."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self.keys = list(keys)
        if not self.keys:
            raise RegistryKeyError(
                "no registry public key is pinned: give the .pub of the coordinator's publishing "
                "key (`--registry-public-key`, ATOLL_REGISTRY_PUBLIC_KEYS); models are served "
                "only if their registry row verifies against it"
            )

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> RowVerifier:
        """From .pub files (PEM); a missing or unreadable file is a RegistryKeyError."""
        try:
            pems = _load_pems(paths)
        except AuditKeyError as err:
            raise RegistryKeyError(f"registry public key: {err}") from None
        return cls(load_public_key(pem) for pem in pems.values())

    def why_not(self, card: Mapping[str, Any], contract_json: str, signature: str | None) -> str:
        """'' when the row verifies, else the reason (no signature, malformed, wrong)."""
        if not signature:
            return "the row carries no publisher signature"
        try:
            raw = bytes.fromhex(signature)
        except ValueError:
            return "the row's signature is malformed"
        message = row_message(card, contract_json)
        for key in self.keys:
            try:
                key.verify(raw, message)
                return ""
            except InvalidSignature:
                continue
        return "the row does not match its publisher signature under any pinned key"


def load_publishing_key(path: Path) -> AuditSigner:
    """The coordinator's publishing key (0600 PEM); created with its .pub on first use."""
    try:
        return AuditSigner.load(path) if Path(path).exists() else AuditSigner.create(path)
    except AuditKeyError as err:
        raise RegistryKeyError(f"publishing key: {err}") from None
