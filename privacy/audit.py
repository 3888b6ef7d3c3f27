"""Tamper-evident audit logs: append-only, hash-chained, Ed25519-signed, stored through SQLAlchemy.

Why: governance and partners must prove afterwards who did what, when, with which data and model,
and detect any later edit. Each entry carries `seq` (contiguous from 1 per `log_id`), a UTC `ts`,
`actor`, dotted `action`, `subject`, structured `details`, the previous entry's hash and its own
hash = sha256 of the canonical JSON of all those fields (plus the format version and the writer's
`key_id`), and an Ed25519 signature over that hash. `verify` recomputes everything and names the
first bad entry; a signed `Checkpoint` kept elsewhere makes truncation of the tail detectable.

Verification never trusts what it verifies: `verify` takes the public keys from the verifier's
own configuration (pinned), never from beside the writer's key or from the database. A writer's
key is created only while its log is empty (`AuditLog.open`, `AuditSigner.load_or_create` with
the log): a missing key for a log that has entries is an error, not a fresh key. `Checkpointer`
applies a `CheckpointPolicy` (every N entries or M seconds, into a directory kept off the
writer's host); each checkpoint must extend the previous one, so a truncated-and-regrown log
gets no new checkpoint to hide behind.

Several logs can share one database (`log_id` "coordinator", "node:marketing", ...).

Failure contract: `AuditLog.append` either commits the entry or raises `AuditWriteError`
(invalid input, database down, lock timeout). A caller MUST then fail the action it was about to
record (refuse the request, abort the round, return 503) — never continue unrecorded.
One append is one short transaction (write lock, one indexed read of the head, one insert),
measured on a busy 2-core machine: SQLite (WAL, synchronous=NORMAL) 0.5-1.5 ms per append
(~700-2,200/s; two concurrent writers ~700-1,100/s together), PostgreSQL ~4 ms (fsync per commit,
~250/s per writer); `verify` checks ~5,000-6,500 entries/s. Rounds take far longer.

Group commit, for writers with many concurrent callers (the scoring API): `GroupCommitWriter`
collects the entries submitted while a commit is in flight and writes them together in ONE
transaction (`AuditLog.append_many`: head read under the lock, contiguous seqs, one insert of all
rows), so the commit cost is shared. Each caller still waits for its own entry to be committed
(`submit(...)` returns a future; `append(...)` blocks), and a failed transaction fails exactly the
entries it held — each of their callers gets `AuditWriteError`, the others are unaffected. Writers
in other processes interleave whole batches under the same lock, so the chain stays one chain.

Never put raw data in an entry: only names, counts, digests, ε, versions. Nothing here adds
anything beyond what the caller passes; errors name the offending key path, never its value.

Subject conventions (exact match, or a prefix with a trailing `*` in `query`): `run:<run_id>` for
run, round and reply events; `model:<name>/v<version>` for models; `node:<name>`;
`key:<key_id>`; `policy:<name>`.

Cross-check schemas (what `crosscheck` compares, one entry per reply that carries an update):

* node log, action `reply.sent` (REPLY_SENT), actor `node:<name>`, subject `run:<run_id>`, written
  just before the ClientApp returns its reply::

      {"run": "<run_id>", "round": <server round int>, "node": "<name>", "kind": "train",
       "update_sha256": digest_arrays(<the exact arrays sent>) | null,
       "epsilon": <float> | "Infinity" | null}

* coordinator log, action `round.reply` (ROUND_REPLY), actor `service:coordinator`, subject
  `run:<run_id>`, written for each reply the ServerApp received::

      {"run": "<run_id>", "round": <int>, "node": "<name>", "kind": "train",
       "update_sha256": digest_arrays(reply.content["arrays"]) | null,
       "epsilon": <float> | "Infinity" | null, "node_id": <int, optional>}

  `kind` may also be "evaluate" (update_sha256 null). Pairs are matched on (run, round, node,
  kind) and compared on CROSSCHECK_FIELDS; a pair missing on either side is a mismatch. Pass ε
  through `json_number` on both sides: details reject NaN/inf, which plain JSON cannot carry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from common.db import (
    SQLITE_BEGIN_OPTION,
    SQLITE_BUSY_TIMEOUT_MS,
    DatabaseURLError,
    make_engine,
    parse_url,
    safe_url,
)
from privacy.audit_models import (
    ACTION_LENGTH,
    ACTOR_LENGTH,
    LOG_ID_LENGTH,
    SUBJECT_LENGTH,
    AuditEntryRow,
)
from privacy.store import open_privacy_db

log = logging.getLogger(__name__)

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


# ---- errors ------------------------------------------------------------------------------------


class AuditError(RuntimeError):
    """An audit log could not be written, read or verified; the message says what to do."""


class AuditWriteError(AuditError):
    """The entry was NOT recorded: the caller must fail the action it was recording."""


class AuditReadError(AuditError):
    """An audit log, export or checkpoint could not be read."""


class AuditKeyError(AuditError):
    """A signing or public key is missing, unreadable, too widely readable or not Ed25519."""


# ---- canonical encoding ------------------------------------------------------------------------


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


# ---- keys --------------------------------------------------------------------------------------


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


# ---- entries -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry as stored; `ts` is the exact UTC text that was hashed."""

    log_id: str
    seq: int
    ts: str
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str
    hash: str
    signature: str
    key_id: str

    @property
    def timestamp(self) -> datetime:
        return datetime.strptime(self.ts, TS_FORMAT).replace(tzinfo=UTC)

    def to_json_dict(self) -> dict[str, Any]:
        """Every field, ready for JSON Lines (re-verifiable with `verify_entries`)."""
        return {
            "log_id": self.log_id,
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "signature": self.signature,
            "key_id": self.key_id,
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> AuditEntry:
        details = data["details"]
        return cls(
            log_id=str(data["log_id"]),
            seq=int(data["seq"]),
            ts=str(data["ts"]),
            actor=str(data["actor"]),
            action=str(data["action"]),
            subject=str(data["subject"]),
            details=details if isinstance(details, dict) else _unreadable(repr(details)),
            prev_hash=str(data["prev_hash"]),
            hash=str(data["hash"]),
            signature=str(data["signature"]),
            key_id=str(data["key_id"]),
        )


def _unreadable(raw: str) -> dict[str, Any]:
    """Stand-in for stored details that are not a JSON object: a digest, never the raw text."""
    return {"_unreadable_details_sha256": hashlib.sha256(raw.encode()).hexdigest()}


def _entry(row: AuditEntryRow) -> AuditEntry:
    try:
        details = json.loads(row.details)
    except (ValueError, TypeError):
        details = None
    return AuditEntry(
        log_id=row.log_id,
        seq=int(row.seq),
        ts=row.ts,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        details=details if isinstance(details, dict) else _unreadable(str(row.details)),
        prev_hash=row.prev_hash,
        hash=row.hash,
        signature=row.signature,
        key_id=row.key_id,
    )


def _check_name(kind: str, value: str, max_length: int, pattern: re.Pattern[str] | None) -> None:
    if not isinstance(value, str):
        raise AuditWriteError(f"audit {kind} must be a string, not {type(value).__name__}")
    if len(value) > max_length or _CONTROL.search(value):
        raise AuditWriteError(
            f"audit {kind} must be at most {max_length} printable characters "
            f"(got {len(value)} characters)"
        )
    if pattern is not None and not pattern.fullmatch(value):
        raise AuditWriteError(
            f"audit {kind} {value!r} is malformed: "
            + (
                "use dotted lowercase words, e.g. 'run.started'"
                if kind == "action"
                else "use letters, digits and ':._@/-', e.g. 'node:marketing'"
            )
        )
    if not value and kind != "subject":
        raise AuditWriteError(f"audit {kind} is empty; say who or what it is")


def _check_log_id(log_id: str) -> None:
    try:
        _check_name("log id", log_id, LOG_ID_LENGTH, _LOG_ID)
    except AuditWriteError as exc:
        raise AuditError(str(exc)) from None


_FLAT = (str, int, bool, type(None))  # exact types a flat details dict holds as they are


def _details_json(details: Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
    plain = _flat(details)
    if plain is None:
        plain = _plain(dict(details or {}), "details")
    encoded = canonical_json(plain)
    if len(encoded) > MAX_DETAILS_BYTES:
        raise AuditWriteError(
            f"details encode to {len(encoded)} bytes (limit {MAX_DETAILS_BYTES}); record "
            "counts and digests, not data"
        )
    return plain, encoded


def _is_unique_violation(exc: IntegrityError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate == "23505" or "UNIQUE constraint failed" in str(exc.orig)


def _raw_unique_violation(exc: BaseException) -> bool:
    """A DBAPI error (not wrapped by SQLAlchemy) that is a UNIQUE violation."""
    return getattr(exc, "sqlstate", None) == "23505" or "UNIQUE constraint failed" in str(exc)


def _rollback_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.rollback()


_RAW_DIALECTS = frozenset({"sqlite", "postgresql"})


def _db_reason(exc: BaseException) -> str:
    """First line of the driver's message (schema/lock problems; never row values)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0] if lines else 'no message'}"


@contextmanager
def _locked(engine: Engine, log_id: str) -> Iterator[Connection]:
    """A transaction holding the log's writer lock (BEGIN IMMEDIATE / PostgreSQL advisory lock).

    Core statements on one connection: the ORM unit of work would double an append's cost.
    """
    with engine.connect() as conn:
        conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                    {"key": f"atoll.audit:{log_id}"},
                )
            yield conn


def _head(conn: Connection, log_id: str) -> tuple[int, str]:
    row = conn.execute(
        select(AuditEntryRow.seq, AuditEntryRow.hash)
        .where(AuditEntryRow.log_id == log_id)
        .order_by(AuditEntryRow.seq.desc())
        .limit(1)
    ).first()
    return (int(row.seq), row.hash) if row is not None else (0, GENESIS_HASH)


# The group-commit hot path speaks plain SQL to the driver: building and compiling Core
# statements costs more than running them (~0.1 ms per transaction). Same table, same columns.
_ROW_COLUMNS = (
    "log_id",
    "seq",
    "ts",
    "actor",
    "action",
    "subject",
    "details",
    "prev_hash",
    "hash",
    "signature",
    "key_id",
)


def _driver_sql(paramstyle: str) -> tuple[str, str]:
    """(head query, insert) for a DBAPI paramstyle (sqlite3: qmark; psycopg: %s)."""
    mark = "?" if paramstyle == "qmark" else "%s"
    table = AuditEntryRow.__tablename__
    head = f"SELECT seq, hash FROM {table} WHERE log_id = {mark} ORDER BY seq DESC LIMIT 1"
    columns = ", ".join(_ROW_COLUMNS)
    values = ", ".join([mark] * len(_ROW_COLUMNS))
    return head, f"INSERT INTO {table} ({columns}) VALUES ({values})"


class AuditLog:
    """The writer of one log (`log_id`) in a privacy database, signing with `signer`.

    Pass a URL (the database is opened and migrated, and closed by `close`) or an engine from
    `privacy.store.open_privacy_db`. Safe to share between threads; several processes may write
    the same log concurrently.
    """

    def __init__(self, engine_or_url: EngineOrURL, log_id: str, signer: AuditSigner) -> None:
        _check_log_id(log_id)
        self.log_id = log_id
        self.signer = signer
        self._owns_engine = not isinstance(engine_or_url, Engine)
        self.engine = _writer_engine(engine_or_url)
        self._lock = threading.Lock()  # one in-process writer at a time: no self-contention
        self._held: Any = None  # the DBAPI connection `append_prepared` keeps (lazily)
        self._defer_checkpoints = False

    @classmethod
    def open(
        cls,
        engine_or_url: EngineOrURL,
        log_id: str,
        key_path: Path,
        *,
        pinned: Mapping[str, str] | None = None,
    ) -> AuditLog:
        """The writer of `log_id` signing with the key at `key_path`.

        The key is created only while the log is empty (first start); see
        `AuditSigner.load_or_create` for the rules, including `pinned` public keys.
        """
        _check_log_id(log_id)
        engine = _writer_engine(engine_or_url)
        owned = not isinstance(engine_or_url, Engine)
        try:
            signer = AuditSigner.load_or_create(
                key_path, engine_or_url=engine, log_id=log_id, pinned=pinned
            )
        except BaseException:
            if owned:
                engine.dispose()
            raise
        log = cls(engine, log_id, signer)
        log._owns_engine = owned
        return log

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._release_batch_connection()
        if self._owns_engine:
            self.engine.dispose()

    def append(
        self,
        actor: str,
        action: str,
        subject: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Record one action, committed and signed, or raise AuditWriteError (then fail it)."""
        _check_name("actor", actor, ACTOR_LENGTH, None)
        _check_name("action", action, ACTION_LENGTH, _ACTION)
        _check_name("subject", subject, SUBJECT_LENGTH, None)
        plain, encoded = _details_json(details)
        with self._lock:
            for attempt in range(1, _APPEND_ATTEMPTS + 1):
                try:
                    return self._append_once(actor, action, subject, plain, encoded)
                except IntegrityError as exc:
                    if not _is_unique_violation(exc) or attempt == _APPEND_ATTEMPTS:
                        raise self._write_error(action, exc) from None
                    log.warning("audit log %s: seq taken by another writer; retrying", self.log_id)
                except SQLAlchemyError as exc:
                    raise self._write_error(action, exc) from None
        raise AssertionError("unreachable")

    def _append_once(
        self, actor: str, action: str, subject: str, details: dict[str, Any], encoded: str
    ) -> AuditEntry:
        with _locked(self.engine, self.log_id) as conn:
            last_seq, prev_hash = _head(conn, self.log_id)
            seq, ts = last_seq + 1, format_ts(datetime.now(UTC))
            fields: dict[str, Any] = {
                "log_id": self.log_id,
                "seq": seq,
                "ts": ts,
                "actor": actor,
                "action": action,
                "subject": subject,
                "details": details,
                "prev_hash": prev_hash,
                "key_id": self.signer.key_id,
            }
            digest = entry_hash(**fields)
            signature = self.signer.sign(_ENTRY_DOMAIN + digest.encode("ascii")).hex()
            entry = AuditEntry(**fields, hash=digest, signature=signature)
            # The row stores `details` as the exact canonical text that was hashed.
            row = {f: getattr(entry, f) for f in AuditEntry.__slots__} | {"details": encoded}
            conn.execute(insert(AuditEntryRow).values(**row))
        return entry

    def _write_error(self, action: str, exc: SQLAlchemyError) -> AuditWriteError:
        return AuditWriteError(
            f"audit log '{self.log_id}' at {safe_url(self.engine.url)} did not record "
            f"'{action}' ({_db_reason(exc)}); the action must not proceed unrecorded — check the "
            "database is reachable, writable and migrated, then retry"
        )

    def append_many(
        self, entries: Sequence[tuple[str, str, str, Mapping[str, Any] | None]]
    ) -> list[AuditEntry]:
        """Record several actions (actor, action, subject, details) in ONE transaction, in order,
        at contiguous seqs — all committed and signed, or none (raises AuditWriteError)."""
        return self.append_prepared([prepare_entry(*entry) for entry in entries])

    def append_prepared(self, items: Sequence[PreparedEntry]) -> list[AuditEntry]:
        """`append_many` of entries already checked by `prepare_entry` (the group writer).

        On SQLite and PostgreSQL the transaction runs on one DBAPI connection this log keeps for
        batches (plain SQL: no pool checkout, no statement compilation — a third of the cost);
        a connection that fails is dropped and the batch tried once more on a fresh one.
        """
        if not items:
            return []
        with self._lock:
            entries = self._append_locked(items, wait=True)
        assert entries is not None  # waiting, it either writes or raises
        return entries

    def try_append_prepared(self, items: Sequence[PreparedEntry]) -> list[AuditEntry] | None:
        """`append_prepared` now if that needs no waiting, else None (nothing written).

        For a caller that must not block (an event loop): on SQLite the database's write lock
        is taken only if it is free at once (no busy wait), and this log's in-process lock
        likewise; another writer holding either means None — hand the batch to a
        `GroupCommitWriter` thread instead. Other databases always answer None (their commit
        waits on the network). A failure raises AuditWriteError as `append_prepared` does.
        """
        if not items or self.engine.dialect.name != "sqlite":
            return None
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._append_locked(items, wait=False)
        finally:
            self._lock.release()

    def _append_locked(
        self, items: Sequence[PreparedEntry], *, wait: bool
    ) -> list[AuditEntry] | None:
        if self.engine.dialect.name not in _RAW_DIALECTS:
            return self._append_batch_portable(items)
        reconnected = False
        attempt = 0
        while True:
            attempt += 1
            try:
                conn = self._batch_connection()
            except SQLAlchemyError as exc:
                raise self._batch_error(items, exc) from None
            try:
                return self._append_batch_raw(conn, items, wait=wait)
            except BaseException as exc:
                _rollback_quietly(conn)
                dbapi_error = self.engine.dialect.loaded_dbapi.Error
                if not isinstance(exc, dbapi_error):
                    self._drop_batch_connection()
                    raise
                if _raw_unique_violation(exc):
                    if attempt < _APPEND_ATTEMPTS:
                        log.warning(
                            "audit log %s: seq taken by another writer; retrying", self.log_id
                        )
                        continue
                elif not reconnected:  # e.g. a server restart killed the kept connection
                    reconnected = True
                    self._drop_batch_connection()
                    continue
                self._drop_batch_connection()
                raise self._batch_error(items, exc) from None

    def _append_batch_portable(self, items: Sequence[PreparedEntry]) -> list[AuditEntry]:
        for attempt in range(1, _APPEND_ATTEMPTS + 1):
            try:
                return self._append_batch_once(items)
            except IntegrityError as exc:
                if not _is_unique_violation(exc) or attempt == _APPEND_ATTEMPTS:
                    raise self._batch_error(items, exc) from None
                log.warning("audit log %s: seq taken by another writer; retrying", self.log_id)
            except SQLAlchemyError as exc:
                raise self._batch_error(items, exc) from None
        raise AssertionError("unreachable")

    def defer_wal_checkpoints(self) -> None:
        """SQLite: batch commits of this log never run a WAL checkpoint themselves (the commit
        that does waits for the page copy and an fsync — milliseconds on an event loop); the
        caller runs `checkpoint_wal` regularly (elsewhere) instead."""
        with self._lock:
            self._defer_checkpoints = True
            self._drop_batch_connection()  # the next one is opened with the setting

    def checkpoint_wal(self) -> None:
        """SQLite: copy the write-ahead log into the database (PASSIVE: never blocks writers)."""
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _batch_connection(self) -> Any:
        if self._held is None:
            held = self.engine.raw_connection()
            if self._defer_checkpoints and self.engine.dialect.name == "sqlite":
                cur = held.cursor()
                cur.execute("PRAGMA wal_autocheckpoint=0")
                cur.close()
            self._held = held
        return self._held

    def _drop_batch_connection(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            try:
                held.invalidate()  # never back into the pool: its state is unknown
            except Exception:  # noqa: BLE001 - it is being thrown away
                log.debug("audit log %s: discarding a failed connection", self.log_id)

    def _release_batch_connection(self) -> None:
        with self._lock:
            held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(Exception):
                held.close()  # back to the pool

    def _append_batch_raw(
        self, conn: Any, items: Sequence[PreparedEntry], *, wait: bool = True
    ) -> list[AuditEntry] | None:
        sqlite = self.engine.dialect.name == "sqlite"
        head_sql, insert_sql = _driver_sql(self.engine.dialect.paramstyle)
        cur = conn.cursor()
        try:
            if sqlite and not wait:
                cur.execute("PRAGMA busy_timeout=0")
                try:
                    cur.execute("BEGIN IMMEDIATE")
                except self.engine.dialect.loaded_dbapi.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    return None  # another process holds the write lock: do not wait here
                finally:
                    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            elif sqlite:
                cur.execute("BEGIN IMMEDIATE")  # the writers' lock, as in `_locked`
            else:
                cur.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    (f"atoll.audit:{self.log_id}",),
                )
            cur.execute(head_sql, (self.log_id,))
            head = cur.fetchone()
            last_seq, prev_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
            entries, rows = self._sign_batch(items, last_seq, prev_hash)
            cur.executemany(insert_sql, rows)
            if sqlite:
                cur.execute("COMMIT")
            else:
                conn.commit()
        finally:
            cur.close()
        return entries

    def _sign_batch(
        self, items: Sequence[PreparedEntry], last_seq: int, prev_hash: str
    ) -> tuple[list[AuditEntry], list[tuple[Any, ...]]]:
        """Entries at last_seq + 1, ... chained from prev_hash, and their rows (in column order
        of `_ROW_COLUMNS`; `details` as the exact canonical text that was hashed)."""
        entries: list[AuditEntry] = []
        rows: list[tuple[Any, ...]] = []
        key_id = self.signer.key_id
        for item in items:
            seq, ts = last_seq + 1, format_ts(datetime.now(UTC))
            digest = entry_hash(
                log_id=self.log_id,
                seq=seq,
                ts=ts,
                actor=item.actor,
                action=item.action,
                subject=item.subject,
                details=item.details,
                prev_hash=prev_hash,
                key_id=key_id,
            )
            signature = self.signer.sign(_ENTRY_DOMAIN + digest.encode("ascii")).hex()
            entries.append(
                AuditEntry(
                    self.log_id,
                    seq,
                    ts,
                    item.actor,
                    item.action,
                    item.subject,
                    item.details,
                    prev_hash,
                    digest,
                    signature,
                    key_id,
                )
            )
            rows.append(
                (self.log_id, seq, ts, item.actor, item.action, item.subject, item.encoded)
                + (prev_hash, digest, signature, key_id)
            )
            last_seq, prev_hash = seq, digest
        return entries, rows

    def _append_batch_once(self, items: Sequence[PreparedEntry]) -> list[AuditEntry]:
        """The batch through SQLAlchemy (any other database)."""
        head_sql, insert_sql = _driver_sql(self.engine.dialect.paramstyle)
        with _locked(self.engine, self.log_id) as conn:
            head = conn.exec_driver_sql(head_sql, (self.log_id,)).first()
            last_seq, prev_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
            entries, rows = self._sign_batch(items, last_seq, prev_hash)
            conn.exec_driver_sql(insert_sql, rows)
        return entries

    def _batch_error(self, items: Sequence[PreparedEntry], exc: BaseException) -> AuditWriteError:
        actions = sorted({item.action for item in items})
        shown = "', '".join(actions[:3]) + ("', ..." if len(actions) > 3 else "'")
        return AuditWriteError(
            f"audit log '{self.log_id}' at {safe_url(self.engine.url)} did not record "
            f"{len(items)} entr{'y' if len(items) == 1 else 'ies'} ('{shown}) "
            f"({_db_reason(exc)}); the actions must not proceed unrecorded — check the database "
            "is reachable, writable and migrated, then retry"
        )

    def head(self) -> tuple[int, str]:
        """(last seq, last hash); (0, GENESIS_HASH) for an empty log."""
        with self.engine.connect() as conn:
            return _head(conn, self.log_id)

    def checkpoint(self, path: Path | None = None) -> Checkpoint:
        """A signed checkpoint of this log now (see `export_checkpoint`)."""
        return export_checkpoint(self.engine, self.log_id, self.signer, path)


def _writer_engine(engine_or_url: EngineOrURL) -> Engine:
    """The engine to write through: given, or the privacy database at a URL (migrated)."""
    if isinstance(engine_or_url, Engine):
        return engine_or_url
    try:
        return open_privacy_db(engine_or_url)
    except DatabaseURLError as exc:
        raise AuditWriteError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise AuditWriteError(
            f"cannot open audit database {safe_url(engine_or_url)}: {_db_reason(exc)}; "
            "check the URL and that the database server is running"
        ) from None


@dataclass(frozen=True, slots=True)
class PreparedEntry:
    """An entry's caller-given fields, checked and canonicalised (`prepare_entry`)."""

    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    encoded: str  # the canonical JSON of `details`, exactly as hashed and stored


def prepare_entry(
    actor: str, action: str, subject: str = "", details: Mapping[str, Any] | None = None
) -> PreparedEntry:
    """Check an entry's fields as `AuditLog.append` does; raises AuditWriteError if invalid."""
    _check_name("actor", actor, ACTOR_LENGTH, None)
    _check_name("action", action, ACTION_LENGTH, _ACTION)
    _check_name("subject", subject, SUBJECT_LENGTH, None)
    plain, encoded = _details_json(details)
    return PreparedEntry(actor, action, subject, plain, encoded)


class GroupCommitWriter:
    """Group commit for one `AuditLog`: entries submitted from any thread (or event loop) while a
    commit is in flight are written together in the next transaction (`append_prepared`).

    `submit(...)` checks the entry at once (AuditWriteError if invalid) and returns a future that
    resolves to the committed, signed `AuditEntry` — or raises AuditWriteError if the transaction
    holding it failed; a failure fails exactly the entries of that transaction. `append(...)`
    waits for it. One writer thread, started on first use; `close()` writes what is pending and
    stops it. At most `max_batch` entries per transaction. `batches` counts transactions
    committed (tests and benchmarks read it).
    """

    def __init__(self, log: AuditLog, *, max_batch: int = 256) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.log = log
        self.max_batch = max_batch
        self._queue: deque[tuple[PreparedEntry, Future[AuditEntry]]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.batches = 0

    def submit(
        self,
        actor: str,
        action: str,
        subject: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> Future[AuditEntry]:
        """Queue one entry; the future resolves once it is committed (see the class)."""
        return self.submit_prepared([prepare_entry(actor, action, subject, details)])[0]

    def submit_prepared(self, items: Sequence[PreparedEntry]) -> list[Future[AuditEntry]]:
        """Queue checked entries (`prepare_entry`) in order, with one wake-up of the writer.

        Entries are committed in queue order, so when the last future is done all are."""
        futures: list[Future[AuditEntry]] = [Future() for _ in items]
        with self._cond:
            self._queue.extend(zip(items, futures, strict=True))
            if self._thread is None:
                self._start()
            self._cond.notify()
        return futures

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"audit-writer:{self.log.log_id}", daemon=True
        )
        self._thread.start()

    def append(
        self,
        actor: str,
        action: str,
        subject: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Record one entry and wait until it is committed; AuditWriteError if it was not."""
        return self.submit(actor, action, subject, details).result()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write everything submitted so far, then stop the writer thread (a later `submit`
        starts a new one: an app whose lifespan ends and starts again keeps working)."""
        with self._cond:
            thread = self._thread
            if thread is None:
                return
            self._stopping = True
            self._cond.notify_all()
        thread.join(timeout)
        with self._cond:
            if self._thread is thread and not thread.is_alive():
                self._thread = None
                self._stopping = False
                if self._queue:  # submitted while the old thread was leaving
                    self._start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return  # asked to stop, and drained
                batch = [
                    self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))
                ]
            self._commit(batch)

    def _commit(self, batch: list[tuple[PreparedEntry, Future[AuditEntry]]]) -> None:
        # A caller that gave up (cancelled) still gets its entry written: the action happened.
        waiting = [future.set_running_or_notify_cancel() for _item, future in batch]
        try:
            entries = self.log.append_prepared([item for item, _future in batch])
        except BaseException as exc:  # fail closed: every caller of this transaction, no other
            if isinstance(exc, AuditWriteError):
                message = str(exc)
            else:
                log.exception("audit log %s: group commit failed", self.log.log_id)
                message = (
                    f"audit log '{self.log.log_id}' did not record {len(batch)} entries "
                    f"({type(exc).__name__}); the actions must not proceed unrecorded"
                )
            for (_item, future), alive in zip(batch, waiting, strict=True):
                if alive:
                    future.set_exception(AuditWriteError(message))
            if not isinstance(exc, Exception):
                raise
            return
        self.batches += 1
        for (_item, future), entry, alive in zip(batch, entries, waiting, strict=True):
            if alive:
                future.set_result(entry)


# ---- reading -----------------------------------------------------------------------------------


@contextmanager
def _reading(engine_or_url: EngineOrURL) -> Iterator[Engine]:
    """An engine for reads; a URL is opened without migrating (reading never changes schemas)."""
    if isinstance(engine_or_url, Engine):
        yield engine_or_url
        return
    try:
        url = parse_url(engine_or_url)
    except DatabaseURLError as exc:
        raise AuditReadError(str(exc)) from None
    path = url.database or ""
    local_file = url.get_backend_name() == "sqlite" and not path.startswith("file:")
    if local_file and path not in {"", ":memory:"} and not Path(path).expanduser().is_file():
        raise AuditReadError(
            f"no audit database at {path}: check the --db URL (sqlite:////absolute/path.db)"
        )
    engine = make_engine(engine_or_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _read_error(engine: Engine, log_id: str, exc: SQLAlchemyError) -> AuditReadError:
    return AuditReadError(
        f"cannot read audit log '{log_id}' at {safe_url(engine.url)} ({_db_reason(exc)}); "
        "check the URL names a database written by AuditLog and that its server is running"
    )


def _match(column: Any, pattern: str) -> Any:
    """Exact match, or prefix match when `pattern` ends with '*'."""
    if not pattern.endswith("*"):
        return column == pattern
    prefix = pattern[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(prefix + "%", escape="\\")


def _select(
    log_id: str,
    *,
    since: datetime | None,
    until: datetime | None,
    actor: str | None,
    action: str | None,
    subject: str | None,
    after_seq: int,
    limit: int | None,
    newest_first: bool,
) -> Select[AuditEntryRow]:
    stmt = select(AuditEntryRow).where(AuditEntryRow.log_id == log_id)
    if since is not None:
        stmt = stmt.where(AuditEntryRow.ts >= format_ts(since))
    if until is not None:
        stmt = stmt.where(AuditEntryRow.ts < format_ts(until))
    for column, pattern in (
        (AuditEntryRow.actor, actor),
        (AuditEntryRow.action, action),
        (AuditEntryRow.subject, subject),
    ):
        if pattern is not None:
            stmt = stmt.where(_match(column, pattern))
    if after_seq:
        stmt = stmt.where(AuditEntryRow.seq > after_seq)
    if newest_first:
        stmt = stmt.order_by(AuditEntryRow.seq.desc(), AuditEntryRow.id.desc())
    else:
        stmt = stmt.order_by(AuditEntryRow.seq, AuditEntryRow.id)
    return stmt.limit(limit) if limit is not None else stmt


def iter_entries(
    engine_or_url: EngineOrURL,
    log_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
    subject: str | None = None,
    after_seq: int = 0,
    limit: int | None = None,
    newest_first: bool = False,
) -> Iterator[AuditEntry]:
    """Stream entries in seq order; `since` inclusive, `until` exclusive; `x*` matches a prefix."""
    stmt = _select(
        log_id,
        since=since,
        until=until,
        actor=actor,
        action=action,
        subject=subject,
        after_seq=after_seq,
        limit=limit,
        newest_first=newest_first,
    )
    with _reading(engine_or_url) as engine, Session(engine) as session:
        try:
            for row in session.scalars(stmt.execution_options(yield_per=500)):
                yield _entry(row)
        except SQLAlchemyError as exc:
            raise _read_error(engine, log_id, exc) from None


def _no_table(engine: Engine) -> bool:
    return not inspect(engine).has_table(AuditEntryRow.__tablename__)


def log_length(engine_or_url: EngineOrURL, log_id: str) -> int:
    """How many entries `log_id` holds (0 for a database or table that does not exist yet)."""
    _check_log_id(log_id)
    if isinstance(engine_or_url, str):
        try:
            url = parse_url(engine_or_url)
        except DatabaseURLError as exc:
            raise AuditReadError(str(exc)) from None
        path = url.database or ""
        if (
            url.get_backend_name() == "sqlite"
            and path not in {"", ":memory:"}
            and not path.startswith("file:")
            and not Path(path).expanduser().is_file()
        ):
            return 0
    with _reading(engine_or_url) as engine:
        try:
            if _no_table(engine):
                return 0
            with engine.connect() as conn:
                count = conn.scalar(select(func.count()).where(AuditEntryRow.log_id == log_id))
        except SQLAlchemyError as exc:
            raise _read_error(engine, log_id, exc) from None
    return int(count or 0)


def list_log_ids(engine_or_url: EngineOrURL) -> list[str]:
    """Every log id with at least one entry in the database, sorted."""
    with _reading(engine_or_url) as engine:
        try:
            if _no_table(engine):
                return []
            with engine.connect() as conn:
                ids = conn.scalars(select(AuditEntryRow.log_id).distinct()).all()
        except SQLAlchemyError as exc:
            raise _read_error(engine, "*", exc) from None
    return sorted(ids)


def query(
    engine_or_url: EngineOrURL,
    log_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
    subject: str | None = None,
    after_seq: int = 0,
    limit: int | None = 1000,
    newest_first: bool = False,
) -> list[AuditEntry]:
    """Entries matching every given filter (see `iter_entries`), at most `limit`."""
    return list(
        iter_entries(
            engine_or_url,
            log_id,
            since=since,
            until=until,
            actor=actor,
            action=action,
            subject=subject,
            after_seq=after_seq,
            limit=limit,
            newest_first=newest_first,
        )
    )


def write_jsonl(entries: Iterable[AuditEntry], out: TextIO) -> int:
    """Write entries as JSON Lines; returns how many."""
    count = 0
    for entry in entries:
        out.write(canonical_json(entry.to_json_dict()) + "\n")
        count += 1
    return count


def export_jsonl(
    engine_or_url: EngineOrURL,
    log_id: str,
    out: Path | TextIO,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
    subject: str | None = None,
    limit: int | None = None,
) -> int:
    """Export matching entries as JSON Lines to a path or open text file; returns the count.

    An unfiltered export can be verified offline with `read_jsonl` + `verify_entries`.
    """
    entries = iter_entries(
        engine_or_url,
        log_id,
        since=since,
        until=until,
        actor=actor,
        action=action,
        subject=subject,
        limit=limit,
    )
    if not isinstance(out, Path):
        return write_jsonl(entries, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="ascii") as f:
        return write_jsonl(entries, f)


def read_jsonl(path: Path) -> Iterator[AuditEntry]:
    """Entries of a JSON Lines export, in file order."""
    try:
        with Path(path).open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield AuditEntry.from_json_dict(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    raise AuditReadError(
                        f"{path} line {number} is not an audit entry; pass a file written by "
                        "`atoll audit export`"
                    ) from None
    except OSError as exc:
        raise AuditReadError(f"cannot read {path}: {exc.strerror}") from None


# ---- checkpoints -------------------------------------------------------------------------------


class Checkpoint(BaseModel):
    """A signed statement "log L had `count` entries ending in `last_hash`", kept elsewhere."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["atoll-audit-checkpoint/1"] = "atoll-audit-checkpoint/1"
    log_id: str
    count: int = Field(ge=0)
    last_seq: int = Field(ge=0)
    last_hash: str = Field(pattern=_HEX64)
    ts: str
    key_id: str = Field(pattern=_HEX64)
    signature: str

    def signed_bytes(self) -> bytes:
        return _CHECKPOINT_DOMAIN + canonical_json(self.model_dump(exclude={"signature"})).encode(
            "ascii"
        )

    def problem(self, log_id: str, public_keys: Mapping[str, str]) -> str | None:
        """Why this checkpoint cannot be trusted for `log_id`, or None."""
        if self.log_id != log_id:
            return f"checkpoint is for log '{self.log_id}', not '{log_id}'"
        if self.count != self.last_seq:
            return f"checkpoint count {self.count} differs from its last seq {self.last_seq}"
        verifiers = _verifiers(public_keys)
        if self.key_id not in verifiers:
            return f"checkpoint is signed by unknown key {self.key_id[:16]}...; pass its .pub file"
        if not _signature_ok(verifiers[self.key_id], self.signature, self.signed_bytes()):
            return "checkpoint signature is invalid: the file was altered or forged"
        return None

    def save(self, path: Path) -> None:
        """Write as JSON atomically (a half-written checkpoint would look like tampering)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n", encoding="ascii")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        try:
            return cls.model_validate_json(Path(path).read_bytes())
        except OSError as exc:
            raise AuditReadError(f"cannot read checkpoint {path}: {exc.strerror}") from None
        except ValidationError as err:
            where = "; ".join(".".join(str(p) for p in e["loc"]) or "file" for e in err.errors())
            raise AuditReadError(
                f"{path} is not an audit checkpoint (bad: {where}); pass a file written by "
                "`atoll audit checkpoint`"
            ) from None


def sign_checkpoint(log_id: str, last_seq: int, last_hash: str, signer: AuditSigner) -> Checkpoint:
    """A checkpoint of a contiguous log ending at (`last_seq`, `last_hash`), signed now."""
    unsigned = Checkpoint(
        log_id=log_id,
        count=last_seq,
        last_seq=last_seq,
        last_hash=last_hash,
        ts=format_ts(datetime.now(UTC)),
        key_id=signer.key_id,
        signature="",
    )
    signature = signer.sign(unsigned.signed_bytes()).hex()
    return unsigned.model_copy(update={"signature": signature})


class CheckpointBrokenError(AuditError):
    """The log no longer contains what an earlier checkpoint vouches for: truncated or rewritten."""


def export_checkpoint(
    engine_or_url: EngineOrURL,
    log_id: str,
    signer: AuditSigner,
    path: Path | None = None,
    *,
    extends: Checkpoint | None = None,
) -> Checkpoint:
    """Sign the log's current count and head hash (written to `path` if given).

    Holds the writers' lock for a few indexed reads so count and head belong together. It vouches
    only for what is stored: run `verify` first if the database may have been touched. With
    `extends` (the previous checkpoint of this log) it refuses, raising `CheckpointBrokenError`,
    unless the log still holds that checkpoint's entry unchanged — so a truncated-and-regrown log
    never gets a fresh checkpoint that would hide the older one.
    """
    _check_log_id(log_id)
    if extends is not None and extends.log_id != log_id:
        raise AuditError(f"checkpoint to extend is for log '{extends.log_id}', not '{log_id}'")
    with _reading(engine_or_url) as engine:
        try:
            with _locked(engine, log_id) as conn:
                last_seq, last_hash = _head(conn, log_id)
                count = conn.scalar(select(func.count()).where(AuditEntryRow.log_id == log_id))
                anchor = (
                    conn.scalar(
                        select(AuditEntryRow.hash).where(
                            AuditEntryRow.log_id == log_id, AuditEntryRow.seq == extends.last_seq
                        )
                    )
                    if extends is not None and extends.last_seq > 0
                    else None
                )
        except SQLAlchemyError as exc:
            raise _read_error(engine, log_id, exc) from None
    if count != last_seq:
        raise AuditError(
            f"audit log '{log_id}' holds {count} entries but ends at seq {last_seq}; it has gaps "
            "or duplicates — run `atoll audit verify` before checkpointing"
        )
    if extends is not None and extends.last_seq > 0 and anchor != extends.last_hash:
        why = (
            f"ends at seq {last_seq}, below"
            if last_seq < extends.last_seq
            else "holds a different entry at"
        )
        raise CheckpointBrokenError(
            f"audit log '{log_id}' {why} seq {extends.last_seq} of its previous checkpoint "
            f"({extends.ts}): it was truncated or rewritten; not checkpointing over it — run "
            "`atoll audit verify --checkpoint` and investigate"
        )
    checkpoint = sign_checkpoint(log_id, last_seq, last_hash, signer)
    if path is not None:
        checkpoint.save(path)
    return checkpoint


# ---- checkpoint files and the periodic checkpoint policy ---------------------------------------

_CHECKPOINT_NAME = re.compile(r"^(?P<log>[A-Za-z0-9._@-]+)\.(?P<seq>\d{12})\.json$")


def _file_safe(log_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]", "_", log_id)


def checkpoint_path(directory: Path, log_id: str, last_seq: int) -> Path:
    """Where a checkpoint directory keeps `log_id`'s checkpoint at `last_seq`."""
    return Path(directory) / f"{_file_safe(log_id)}.{last_seq:012d}.json"


def latest_checkpoint(directory: Path, log_id: str) -> tuple[Path, Checkpoint] | None:
    """The checkpoint of `log_id` with the highest seq in `directory` (None if there is none).

    Files named by `checkpoint_path` are read newest first; other *.json files (e.g. the
    coordinator's per-run checkpoints) are read too. Unreadable files are skipped with a warning
    (a verifier that fails closed should pass the file it expects explicitly).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    safe = _file_safe(log_id)
    named: list[tuple[int, Path]] = []
    others: list[Path] = []
    for path in directory.glob("*.json"):
        m = _CHECKPOINT_NAME.match(path.name)
        if m is None:
            others.append(path)
        elif m["log"] == safe:
            named.append((int(m["seq"]), path))
    best: tuple[Path, Checkpoint] | None = None
    for _seq, path in sorted(named, reverse=True):
        found = _load_quietly(path, log_id)
        if found is not None:
            best = (path, found)
            break
    for path in others:
        found = _load_quietly(path, log_id)
        if found is not None and (best is None or found.last_seq > best[1].last_seq):
            best = (path, found)
    return best


def _load_quietly(path: Path, log_id: str) -> Checkpoint | None:
    try:
        found = Checkpoint.load(path)
    except AuditReadError as exc:
        log.warning("skipping %s: %s", path.name, exc)
        return None
    return found if found.log_id == log_id else None


@dataclass(frozen=True)
class CheckpointPolicy:
    """Write a signed checkpoint of a log to `directory` once it has grown by `every_entries`
    entries, or `every_seconds` after the last one if it grew at all. Keep `directory` off the
    writer's host (or replicate it): whoever can rewrite the database must not reach it."""

    directory: Path
    every_entries: int = 1000
    every_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.every_entries < 1 or self.every_seconds <= 0:
            raise ValueError(
                "checkpoint policy needs every_entries >= 1 and every_seconds > 0, got "
                f"{self.every_entries} and {self.every_seconds}"
            )


class Checkpointer:
    """Applies a `CheckpointPolicy` to some logs of one database, signing with `signer`.

    Call `run_due()` now and then (e.g. every few seconds) and `run_due(force=True)` at shutdown.
    Each new checkpoint must extend the previous one (see `export_checkpoint(extends=)`): a log
    found truncated or rewritten gets no new checkpoint, only an error in the log, so the last
    good checkpoint keeps exposing it. Thread-safe.
    """

    def __init__(
        self,
        engine: Engine,
        log_ids: Iterable[str],
        signer: AuditSigner,
        policy: CheckpointPolicy,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.engine = engine
        self.signer = signer
        self.policy = policy
        self._clock = clock or time.monotonic
        self.log_ids = list(log_ids)
        for log_id in self.log_ids:
            _check_log_id(log_id)
        self._lock = threading.Lock()
        self._last: dict[str, Checkpoint | None] = {}
        self._last_at: dict[str, float] = {}
        self._broken: dict[str, tuple[int, str]] = {}
        now = self._clock()
        for log_id in self.log_ids:
            found = latest_checkpoint(policy.directory, log_id)
            self._last[log_id] = found[1] if found else None
            self._last_at[log_id] = now

    def last(self, log_id: str) -> Checkpoint | None:
        return self._last.get(log_id)

    def run_due(self, *, force: bool = False) -> list[Path]:
        """Checkpoint every log that is due; returns the files written."""
        written: list[Path] = []
        with self._lock:
            for log_id in self.log_ids:
                try:
                    path = self._maybe(log_id, force)
                except CheckpointBrokenError as exc:
                    state = self._head(log_id)
                    if self._broken.get(log_id) != state:  # say it once per state, not per tick
                        log.error("%s", exc)
                        self._broken[log_id] = state
                    continue
                except AuditError as exc:
                    log.error("checkpoint of audit log '%s' failed: %s", log_id, exc)
                    continue
                if path is not None:
                    written.append(path)
        return written

    def _head(self, log_id: str) -> tuple[int, str]:
        try:
            with self.engine.connect() as conn:
                return _head(conn, log_id)
        except SQLAlchemyError:
            return (-1, "")

    def _maybe(self, log_id: str, force: bool) -> Path | None:
        last = self._last[log_id]
        seq, head_hash = self._head(log_id)
        if seq < 0:
            raise AuditError("cannot read the log's head")
        last_seq = last.last_seq if last is not None else 0
        if last is not None and (seq, head_hash) == (last.last_seq, last.last_hash):
            return None  # nothing new since the last checkpoint
        if seq == 0 and last is None:
            return None  # empty log, nothing to vouch for
        grown = seq - last_seq
        elapsed = self._clock() - self._last_at[log_id]
        if not (
            force or grown >= self.policy.every_entries or elapsed >= self.policy.every_seconds
        ):
            return None
        mark = export_checkpoint(self.engine, log_id, self.signer, extends=last)
        path = checkpoint_path(self.policy.directory, log_id, mark.last_seq)
        if not path.exists():  # never overwrite: an existing file is the record
            mark.save(path)
        self._last[log_id], self._last_at[log_id] = mark, self._clock()
        self._broken.pop(log_id, None)
        log.info("audit checkpoint %s: log '%s' at seq %d", path, log_id, mark.last_seq)
        return path


# ---- verification ------------------------------------------------------------------------------


class Problem(StrEnum):
    """Why an entry (or the log) fails verification."""

    MODIFIED = "modified"  # content differs from what its hash covers
    DELETED = "deleted"  # a seq is missing (gap)
    REORDERED = "reordered"  # an intact entry sits at another seq than it was written at
    INSERTED = "inserted"  # an extra entry claims an existing seq
    BROKEN_LINK = "broken_link"  # intact, signed, but does not follow the entry before it
    BAD_SIGNATURE = "bad_signature"  # forged or inserted: signature does not match
    UNKNOWN_KEY = "unknown_key"  # signed by a key the verifier does not trust
    TRUNCATED = "truncated"  # the log ends before, or differs at, a checkpoint
    BAD_CHECKPOINT = "bad_checkpoint"  # the checkpoint itself cannot be trusted


class VerifyReport(BaseModel):
    """Outcome of verifying one log; `first_bad_seq` and `problem` are set when not ok."""

    log_id: str
    ok: bool
    entries: int  # entries that verified (all of them when ok)
    last_seq: int  # seq of the last entry that verified
    last_hash: str
    first_bad_seq: int | None = None
    problem: Problem | None = None
    message: str
    signers: dict[str, int] = Field(default_factory=dict)  # key_id -> entries signed
    checkpoint_seq: int | None = None
    checkpoint_file: str | None = None  # which stored checkpoint was used, when one was


def _recomputed(entry: AuditEntry, seq: int) -> str | None:
    try:
        return entry_hash(
            log_id=entry.log_id,
            seq=seq,
            ts=entry.ts,
            actor=entry.actor,
            action=entry.action,
            subject=entry.subject,
            details=entry.details,
            prev_hash=entry.prev_hash,
            key_id=entry.key_id,
        )
    except (ValueError, TypeError):
        return None  # details no longer encode (e.g. NaN written in by hand)


def _content_problem(
    entry: AuditEntry, log_id: str, verifiers: Mapping[str, Ed25519PublicKey]
) -> tuple[Problem, str] | None:
    """Hash and signature of one entry on its own."""
    if entry.log_id != log_id:
        return Problem.MODIFIED, f"entry belongs to log '{entry.log_id}', not '{log_id}'"
    if _recomputed(entry, entry.seq) != entry.hash:
        for other in range(max(1, entry.seq - REORDER_WINDOW), entry.seq + REORDER_WINDOW + 1):
            if other != entry.seq and _recomputed(entry, other) == entry.hash:
                return Problem.REORDERED, f"entry was written as seq {other} and moved"
        return Problem.MODIFIED, "content differs from its hash: edited after it was written"
    key = verifiers.get(entry.key_id)
    if key is None:
        return (
            Problem.UNKNOWN_KEY,
            f"signed by unknown key {entry.key_id[:16]}...: inserted, or pass the writer's .pub",
        )
    if not _signature_ok(key, entry.signature, _ENTRY_DOMAIN + entry.hash.encode("ascii")):
        return Problem.BAD_SIGNATURE, "signature does not match: forged or inserted entry"
    return None


def verify_entries(
    entries: Iterable[AuditEntry],
    log_id: str,
    public_keys: Mapping[str, str],
    checkpoint: Checkpoint | None = None,
    *,
    checkpoint_keys: Mapping[str, str] | None = None,
) -> VerifyReport:
    """Check entries given in seq order: continuity from 1, links, hashes, signatures, checkpoint.

    Stops at the first bad entry and says what is wrong with it. `public_keys` ({key_id: pem})
    are the keys entries may be signed with — pinned by the verifier, never read from beside the
    writer's key; the checkpoint may also be signed by one of `checkpoint_keys` (e.g. the API's key
    for the admin log it checkpoints). A log that ends below the checkpoint — including an empty
    log where the checkpoint vouches for entries — is TRUNCATED.
    """
    verifiers = _verifiers(public_keys)
    count, last_seq, last_hash = 0, 0, GENESIS_HASH
    signers: dict[str, int] = {}

    def report(problem: Problem | None, seq: int | None, message: str) -> VerifyReport:
        return VerifyReport(
            log_id=log_id,
            ok=problem is None,
            entries=count,
            last_seq=last_seq,
            last_hash=last_hash,
            first_bad_seq=seq,
            problem=problem,
            message=message,
            signers=signers,
            checkpoint_seq=checkpoint.last_seq if checkpoint is not None else None,
        )

    trusted = {**public_keys, **(checkpoint_keys or {})}
    if checkpoint is not None and (why := checkpoint.problem(log_id, trusted)):
        return report(Problem.BAD_CHECKPOINT, None, why)
    for entry in entries:
        expected = last_seq + 1
        if entry.seq < expected:
            return report(
                Problem.INSERTED, entry.seq, f"a second entry claims seq {entry.seq} (a fork)"
            )
        if entry.seq > expected:
            missing = f"{expected}" if entry.seq == expected + 1 else f"{expected}-{entry.seq - 1}"
            return report(Problem.DELETED, expected, f"seq {missing} missing: entries deleted")
        found = _content_problem(entry, log_id, verifiers)
        if found is not None:
            return report(found[0], entry.seq, f"seq {entry.seq}: {found[1]}")
        if entry.prev_hash != last_hash:
            return report(
                Problem.BROKEN_LINK,
                entry.seq,
                f"seq {entry.seq} does not follow seq {last_seq}: an entry before it was "
                "replaced or the log was forked",
            )
        if (
            checkpoint is not None
            and entry.seq == checkpoint.last_seq
            and entry.hash != checkpoint.last_hash
        ):
            return report(
                Problem.TRUNCATED,
                entry.seq,
                f"seq {entry.seq} differs from the checkpoint's: the log was truncated and "
                "rewritten after the checkpoint",
            )
        count, last_seq, last_hash = count + 1, entry.seq, entry.hash
        signers[entry.key_id] = signers.get(entry.key_id, 0) + 1
    if checkpoint is not None and last_seq < checkpoint.last_seq:
        return report(
            Problem.TRUNCATED,
            last_seq + 1,
            f"log ends at seq {last_seq} but the checkpoint vouches for {checkpoint.last_seq} "
            "entries: the tail was deleted",
        )
    return report(None, None, f"{count} entries verified")


def verify(
    engine_or_url: EngineOrURL,
    log_id: str,
    public_keys: Mapping[str, str],
    checkpoint: Checkpoint | None = None,
    *,
    checkpoint_keys: Mapping[str, str] | None = None,
) -> VerifyReport:
    """Verify a stored log (see `verify_entries`); `public_keys` is {key_id: pem}."""
    return verify_entries(
        iter_entries(engine_or_url, log_id),
        log_id,
        public_keys,
        checkpoint,
        checkpoint_keys=checkpoint_keys,
    )


# ---- update digests and the node/coordinator cross-check ---------------------------------------


def _as_numpy(value: Any, name: str) -> np.ndarray:
    """numpy view of an ndarray, torch tensor or Flower Array, without importing torch."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # torch.Tensor
        return np.asarray(value.detach().cpu().numpy())
    if hasattr(value, "numpy"):  # flwr.app.Array
        return np.asarray(value.numpy())
    raise TypeError(f"array '{name}' is a {type(value).__name__}; pass numpy arrays or tensors")


def digest_arrays(arrays: Mapping[str, Any]) -> str:
    """sha256 over an update's exact bytes: per name (sorted) its dtype, shape and data.

    Accepts a torch state dict, a Flower ArrayRecord or a dict of numpy arrays, so the node
    (before sending) and the coordinator (after receiving) get the same digest for the same update.
    """
    digest = hashlib.sha256(_ARRAYS_DOMAIN)
    for name in sorted(arrays):
        array = _as_numpy(arrays[name], name)
        if array.dtype.hasobject:
            raise TypeError(f"array '{name}' has object dtype; updates are numeric arrays")
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        header = canonical_json(
            {"name": name, "dtype": array.dtype.str, "shape": list(array.shape)}
        ).encode("ascii")
        data = array.tobytes()
        digest.update(len(header).to_bytes(8, "big") + header)
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


class Mismatch(BaseModel):
    """One disagreement between the coordinator's and a node's record of a reply."""

    run: str
    round: int | None
    node: str
    kind: str
    problem: Literal[
        "differs", "missing_on_node", "missing_on_coordinator", "duplicate", "malformed"
    ]
    field: str | None = None
    coordinator_value: str | int | float | None = None
    node_value: str | int | float | None = None
    coordinator_seq: int | None = None
    node_seq: int | None = None

    def describe(self) -> str:
        where = f"run {self.run} round {self.round} node {self.node} ({self.kind})"
        if self.problem == "differs":
            return (
                f"{where}: {self.field} differs — coordinator {self.coordinator_value} "
                f"(seq {self.coordinator_seq}), node {self.node_value} (seq {self.node_seq})"
            )
        return f"{where}: {self.problem.replace('_', ' ')}"


_Key = tuple[str, int, str, str]  # (run, round, node, kind)


def _reply_index(
    entries: Iterable[AuditEntry], action: str, side: Literal["coordinator", "node"]
) -> tuple[dict[_Key, AuditEntry], list[Mismatch]]:
    """Entries of one side by key, plus malformed and duplicate ones as mismatches."""
    index: dict[_Key, AuditEntry] = {}
    problems: list[Mismatch] = []
    for entry in entries:
        if entry.action != action:
            continue
        d = entry.details
        run, rnd, node, kind = d.get("run"), d.get("round"), d.get("node"), d.get("kind", "train")
        cseq, nseq = (entry.seq, None) if side == "coordinator" else (None, entry.seq)
        if run is None or not isinstance(rnd, int) or not isinstance(node, str):
            problems.append(
                Mismatch(
                    run=str(run),
                    round=None,
                    node=str(node),
                    kind=str(kind),
                    problem="malformed",
                    coordinator_seq=cseq,
                    node_seq=nseq,
                )
            )
            continue
        key = (str(run), rnd, node, str(kind))
        if key in index:
            problems.append(
                Mismatch(
                    run=key[0],
                    round=rnd,
                    node=node,
                    kind=key[3],
                    problem="duplicate",
                    coordinator_seq=cseq,
                    node_seq=nseq,
                )
            )
            continue
        index[key] = entry
    return index, problems


def _scalar(value: Any) -> str | int | float | None:
    return value if value is None or isinstance(value, str | int | float) else canonical_json(value)


def _compare(key: _Key, coord: AuditEntry | None, node: AuditEntry | None) -> list[Mismatch]:
    """Mismatches of one (run, round, node, kind) between the two sides."""
    run, rnd, name, kind = key
    if coord is None or node is None:
        return [
            Mismatch(
                run=run,
                round=rnd,
                node=name,
                kind=kind,
                problem="missing_on_coordinator" if coord is None else "missing_on_node",
                coordinator_seq=coord.seq if coord else None,
                node_seq=node.seq if node else None,
            )
        ]
    return [
        Mismatch(
            run=run,
            round=rnd,
            node=name,
            kind=kind,
            problem="differs",
            field=field,
            coordinator_value=_scalar(coord.details.get(field)),
            node_value=_scalar(node.details.get(field)),
            coordinator_seq=coord.seq,
            node_seq=node.seq,
        )
        for field in CROSSCHECK_FIELDS
        if coord.details.get(field) != node.details.get(field)
    ]


def crosscheck(
    coordinator_entries: Iterable[AuditEntry],
    node_entries: Iterable[AuditEntry],
    *,
    nodes: Iterable[str] | None = None,
    run: str | None = None,
) -> list[Mismatch]:
    """Compare the coordinator's `round.reply` entries with nodes' `reply.sent` entries.

    Only coordinator entries for `nodes` are compared (default: the nodes named in
    `node_entries`, i.e. the node logs given); `run` limits both sides to one run.
    """
    theirs, node_problems = _reply_index(node_entries, REPLY_SENT, "node")
    ours, coord_problems = _reply_index(coordinator_entries, ROUND_REPLY, "coordinator")
    names = set(nodes) if nodes is not None else {key[2] for key in theirs}

    def wanted(run_id: str, node: str) -> bool:
        return node in names and (run is None or run_id == run)

    ours = {k: v for k, v in ours.items() if wanted(k[0], k[2])}
    theirs = {k: v for k, v in theirs.items() if wanted(k[0], k[2])}
    problems = [p for p in node_problems if run is None or p.run == run]
    problems += [p for p in coord_problems if wanted(p.run, p.node) or p.problem == "malformed"]
    for key in sorted(ours.keys() | theirs.keys()):
        problems.extend(_compare(key, ours.get(key), theirs.get(key)))
    return problems
