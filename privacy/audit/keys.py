"""Ed25519 signing keys of audit writers and the public keys verifiers pin."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privacy.audit.canonical import AuditKeyError, EngineOrURL
from privacy.audit.reading import log_length


def _public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_public_key(public_key_pem: str) -> Ed25519PublicKey:
    """Parse an Ed25519 public key (PEM SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode("ascii"))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError):
        raise AuditKeyError(
            "public key is not a PEM public key; pass the .pub file from `atoll audit keygen`"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(
            f"public key is {type(key).__name__}, not Ed25519; use `atoll audit keygen` keys"
        )
    return key


def key_id_of(public_key_pem: str) -> str:
    """Fingerprint of a public key: sha256 hex of its raw 32 bytes (stored as `key_id`)."""
    return _key_id(load_public_key(public_key_pem))


def load_public_keys(paths: Iterable[Path]) -> dict[str, str]:
    """{key_id: pem} for `verify`, from .pub files."""
    keys: dict[str, str] = {}
    for path in paths:
        try:
            pem = Path(path).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuditKeyError(
                f"cannot read public key {path}: {getattr(exc, 'strerror', None) or 'not PEM'}; "
                "pass the .pub file written by `atoll audit keygen`"
            ) from None
        try:
            keys[key_id_of(pem)] = pem
        except AuditKeyError as exc:
            raise AuditKeyError(f"{path}: {exc}") from None
    return keys


class AuditSigner:
    """The writer's Ed25519 key; `key_id` (its fingerprint) is stored with every entry.

    Key files are PKCS#8 PEM, mode 0600 inside a directory only the owner can enter; the private
    key is never printed, logged or repr'd.
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        public = private_key.public_key()
        self.public_key_pem: str = _public_pem(public)
        self.key_id: str = _key_id(public)

    def __repr__(self) -> str:
        return f"AuditSigner(key_id={self.key_id[:16]}...)"

    @classmethod
    def generate(cls) -> AuditSigner:
        """A fresh key held in memory only (tests, ephemeral writers)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def create(cls, path: Path) -> AuditSigner:
        """Generate a key, write it to `path` (0600) and its public key next to it (`.pub`).

        Refuses to overwrite: entries signed by an existing key would become unverifiable if its
        public key were lost with it.
        """
        path = Path(path)
        _private_dir(path.parent)
        signer = cls.generate()
        pem = signer._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise AuditKeyError(
                f"{path} already exists; keep it (its public key verifies old entries) or choose "
                "another path"
            ) from None
        except OSError as exc:
            raise AuditKeyError(f"cannot create {path}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.chmod(path, 0o600)
        signer.public_key_path(path).write_text(signer.public_key_pem, encoding="ascii")
        return signer

    @classmethod
    def load(cls, path: Path) -> AuditSigner:
        """Read a key written by `create`; refuses files others can read."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as exc:
            raise AuditKeyError(
                f"cannot read audit signing key {path}: {exc.strerror}; "
                "create one with `atoll audit keygen`"
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuditKeyError(
                f"audit signing key {path} is readable by other users "
                f"(mode {stat.S_IMODE(mode):o}); run chmod 600 on it"
            )
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise AuditKeyError(
                f"{path} is not an unencrypted PEM private key; create one with "
                "`atoll audit keygen`"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise AuditKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)

    @classmethod
    def load_or_create(
        cls,
        path: Path,
        *,
        engine_or_url: EngineOrURL | None = None,
        log_id: str | None = None,
        pinned: Mapping[str, str] | None = None,
    ) -> AuditSigner:
        """The key at `path`, created on first use (a node's or the coordinator's own key).

        Give the log the key writes (`engine_or_url` and `log_id`) and a missing key is created
        only while that log is empty: a log that already has entries lost its key, and a fresh key
        beside it would silently sign a continuation nobody can tell from a forgery — that is an
        `AuditKeyError` (restore the key). With `pinned` ({key_id: pem}, the verifier's
        configuration) the key must be one of them, and a missing key is never created (a new
        key could not match).
        """
        path = Path(path)
        if path.exists():
            signer = cls.load(path)
        else:
            if engine_or_url is not None and log_id is not None:
                held = log_length(engine_or_url, log_id)
                if held:
                    raise AuditKeyError(
                        f"audit signing key {path} is missing but log '{log_id}' already holds "
                        f"{held} entries; restore the key from its backup (it is not re-created: "
                        "a new key would sign entries no pinned public key vouches for). To "
                        "retire it for good, create a new key with `atoll audit keygen`, pin its "
                        ".pub beside the old one in the verifiers' configuration and pass the new "
                        "key explicitly"
                    )
            if pinned:
                raise AuditKeyError(
                    f"audit signing key {path} is missing and public keys are pinned for it: a "
                    "new key would match none of them; restore the key, or create one with "
                    "`atoll audit keygen` and pin its .pub"
                )
            signer = cls.create(path)
        if pinned and signer.key_id not in pinned:
            raise AuditKeyError(
                f"audit signing key {path} (key id {signer.key_id[:16]}...) is not one of the "
                f"{len(pinned)} pinned public key(s): the key file was replaced or the wrong "
                "public key is configured; restore the key or pin the right .pub"
            )
        return signer

    @staticmethod
    def public_key_path(path: Path) -> Path:
        """Where `create` puts the public key of the private key at `path`."""
        return Path(path).with_suffix(".pub")

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def _private_dir(directory: Path) -> None:
    """Create `directory` 0700, or refuse one that others can enter."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = directory.stat().st_mode
    except OSError as exc:
        raise AuditKeyError(f"cannot create key directory {directory}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuditKeyError(
            f"key directory {directory} is accessible to other users (mode "
            f"{stat.S_IMODE(mode):o}); use a directory of its own (created 0700) or chmod 700 it"
        )


def _verifiers(public_keys: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    """Parse {key_id: pem}, refusing a key filed under another key's id."""
    parsed: dict[str, Ed25519PublicKey] = {}
    for key_id, pem in public_keys.items():
        key = load_public_key(pem)
        if _key_id(key) != key_id:
            raise AuditKeyError(
                f"public key filed under key id {key_id[:16]}... has fingerprint "
                f"{_key_id(key)[:16]}...; build the mapping with load_public_keys()"
            )
        parsed[key_id] = key
    return parsed


def _signature_ok(key: Ed25519PublicKey, signature_hex: str, message: bytes) -> bool:
    try:
        key.verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True
