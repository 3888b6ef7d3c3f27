"""API key material: the key format, its parsing and its salted HMAC digest."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_PREFIX = "atoll"
_KEY_ID_HEX = 12  # 48 bits: unique id, public
_SECRET_BYTES = 32  # 256 bits: the secret
_KEY_PATTERN = re.compile(r"atoll_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}")
_DUMMY_SALT = secrets.token_bytes(16)


def _digest(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode("ascii"), hashlib.sha256).hexdigest()


def format_key(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}_{key_id}_{secret}"


def parse_key(presented: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key string; None otherwise."""
    m = _KEY_PATTERN.fullmatch(presented)
    return (m[1], m[2]) if m else None
