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

from privacy.audit.canonical import (
    CHECKPOINT_FORMAT,
    CROSSCHECK_FIELDS,
    FORMAT_VERSION,
    GENESIS_HASH,
    MAX_DETAILS_BYTES,
    REORDER_WINDOW,
    REPLY_SENT,
    ROUND_REPLY,
    TS_FORMAT,
    AuditError,
    AuditKeyError,
    AuditReadError,
    AuditWriteError,
    EngineOrURL,
    canonical_json,
    entry_hash,
    format_ts,
    json_number,
)
from privacy.audit.chain import (
    AuditLog,
)
from privacy.audit.checkpoints import (
    Checkpoint,
    CheckpointBrokenError,
    Checkpointer,
    CheckpointPolicy,
    checkpoint_path,
    export_checkpoint,
    latest_checkpoint,
    sign_checkpoint,
)
from privacy.audit.crosscheck import (
    Mismatch,
    crosscheck,
    digest_arrays,
)
from privacy.audit.entries import (
    AuditEntry,
)
from privacy.audit.group_commit import (
    GroupCommitWriter,
    PreparedEntry,
    prepare_entry,
)
from privacy.audit.keys import (
    AuditSigner,
    key_id_of,
    load_public_key,
    load_public_keys,
)
from privacy.audit.reading import (
    export_jsonl,
    iter_entries,
    list_log_ids,
    log_length,
    query,
    read_jsonl,
    write_jsonl,
)
from privacy.audit.verify import (
    Problem,
    VerifyReport,
    verify,
    verify_entries,
)

__all__ = [
    "AuditEntry",
    "AuditError",
    "AuditKeyError",
    "AuditLog",
    "AuditReadError",
    "AuditSigner",
    "AuditWriteError",
    "CHECKPOINT_FORMAT",
    "CROSSCHECK_FIELDS",
    "Checkpoint",
    "CheckpointBrokenError",
    "CheckpointPolicy",
    "Checkpointer",
    "EngineOrURL",
    "FORMAT_VERSION",
    "GENESIS_HASH",
    "GroupCommitWriter",
    "MAX_DETAILS_BYTES",
    "Mismatch",
    "PreparedEntry",
    "Problem",
    "REORDER_WINDOW",
    "REPLY_SENT",
    "ROUND_REPLY",
    "TS_FORMAT",
    "VerifyReport",
    "canonical_json",
    "checkpoint_path",
    "crosscheck",
    "digest_arrays",
    "entry_hash",
    "export_checkpoint",
    "export_jsonl",
    "format_ts",
    "iter_entries",
    "json_number",
    "key_id_of",
    "latest_checkpoint",
    "list_log_ids",
    "load_public_key",
    "load_public_keys",
    "log_length",
    "prepare_entry",
    "query",
    "read_jsonl",
    "sign_checkpoint",
    "verify",
    "verify_entries",
    "write_jsonl",
]
