"""Signed checkpoints (count + last hash), their files and the periodic checkpoint policy."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import (
    Engine,
    func,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from privacy.audit.canonical import (
    _CHECKPOINT_DOMAIN,
    _HEX64,
    AuditError,
    AuditReadError,
    EngineOrURL,
    canonical_json,
    format_ts,
)
from privacy.audit.entries import _check_log_id, _head, _locked
from privacy.audit.keys import AuditSigner, _signature_ok, _verifiers
from privacy.audit.reading import _read_error, _reading
from privacy.audit_models import (
    AuditEntryRow,
)

log = logging.getLogger(__name__)


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
