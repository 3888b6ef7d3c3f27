"""Verification: recompute every hash and signature and name the first bad entry."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, Field

from privacy.audit.canonical import (
    _ENTRY_DOMAIN,
    GENESIS_HASH,
    REORDER_WINDOW,
    EngineOrURL,
    entry_hash,
)
from privacy.audit.checkpoints import Checkpoint
from privacy.audit.entries import AuditEntry
from privacy.audit.keys import _signature_ok, _verifiers
from privacy.audit.reading import iter_entries


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
