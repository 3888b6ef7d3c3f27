"""Constants, errors and the canonical encoding every entry and signature is computed over."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    Engine,
)

from common.errors import AtollError

FORMAT_VERSION = 1
GENESIS_HASH = "0" * 64  # prev_hash of seq 1
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
MAX_DETAILS_BYTES = 64 * 1024  # entries describe actions; anything bigger is data, not audit
REORDER_WINDOW = 64  # how far `verify` looks to tell "moved" from "modified"
CHECKPOINT_FORMAT = "atoll-audit-checkpoint/1"
REPLY_SENT = "reply.sent"
ROUND_REPLY = "round.reply"
CROSSCHECK_FIELDS = ("update_sha256", "epsilon")  # nodes release no exact example counts

_ENTRY_DOMAIN = b"atoll-audit-entry/1\n"  # signatures of entries and checkpoints never mix
_CHECKPOINT_DOMAIN = b"atoll-audit-checkpoint/1\n"
_ARRAYS_DOMAIN = b"atoll-arrays/1\n"
_APPEND_ATTEMPTS = 3  # a writer that skips the lock can take our seq; then we re-read the head
_MAX_DEPTH = 32
_LOG_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._@/-]*")
_ACTION = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_-]*)+")
_HEX64 = r"^[0-9a-f]{64}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

EngineOrURL = Engine | str
_FLAT = (str, int, bool, type(None))  # exact types a flat details dict holds as they are


class AuditError(AtollError, RuntimeError):
    """An audit log could not be written, read or verified; the message says what to do."""


class AuditWriteError(AuditError):
    """The entry was NOT recorded: the caller must fail the action it was recording."""


class AuditReadError(AuditError):
    """An audit log, export or checkpoint could not be read."""


class AuditKeyError(AuditError):
    """A signing or public key is missing, unreadable, too widely readable or not Ed25519."""


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, ASCII only, floats by repr, no NaN/inf."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def json_number(value: float | int | None) -> float | int | str | None:
    """A number details can hold: non-finite floats (ε without noise) become their name."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _flat(details: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`_plain` of the common case without the walk: a dict of str keys to str, int, bool, None
    or finite float values (exactly these types). None for anything else (then `_plain`)."""
    if type(details) is not dict:
        return None if details is not None else {}
    for key, value in details.items():
        if type(key) is not str:
            return None
        kind = type(value)
        if kind not in _FLAT and not (kind is float and math.isfinite(value)):
            return None
    return dict(details)


def _plain(value: Any, path: str, depth: int = 0) -> Any:
    """JSON-native copy of `value`; errors name the key path and type, never the value."""
    if depth > _MAX_DEPTH:
        raise AuditWriteError(f"{path} nests deeper than {_MAX_DEPTH} levels; flatten the details")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        return _plain(value.item(), path, depth)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditWriteError(
                f"{path} is NaN or infinite; pass it through json_number() (stores 'Infinity') "
                "or use null"
            )
        return float(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditWriteError(
                    f"{path} has a {type(key).__name__} key; details keys must be strings"
                )
            out[key] = _plain(item, f"{path}.{key}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise AuditWriteError(
        f"{path} is a {type(value).__name__}; details hold only JSON types "
        "(str, int, float, bool, None, lists and dicts)"
    )


def format_ts(moment: datetime) -> str:
    """The fixed-width UTC text stored and hashed for a timestamp (sorts like the instant)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: pass an aware datetime (e.g. datetime.now(UTC))")
    return moment.astimezone(UTC).strftime(TS_FORMAT)


def entry_hash(
    *,
    log_id: str,
    seq: int,
    ts: str,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, Any],
    prev_hash: str,
    key_id: str,
) -> str:
    """sha256 hex of the canonical JSON of every field an entry's signature vouches for."""
    payload = {
        "v": FORMAT_VERSION,
        "log_id": log_id,
        "seq": seq,
        "ts": ts,
        "actor": actor,
        "action": action,
        "subject": subject,
        "details": details,
        "prev_hash": prev_hash,
        "key_id": key_id,
    }
    return hashlib.sha256(canonical_json(payload).encode("ascii")).hexdigest()
