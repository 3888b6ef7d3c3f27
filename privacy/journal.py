"""The ledger's authenticated journal: HMAC-chained entries, head pinned by an anchor file.

Every mutation of a node's ledger is one row of `ledger_journal`: (seq, kind, run_id, payload,
created_at, prev_mac, mac) with mac = HMAC-SHA256(key, domain ‖ canonical JSON of the other
fields). The 32-byte key lives in the state directory (`ledger.key`, 0600), never in the
database, so whoever can edit the database but not read the key cannot mint, alter or re-chain
an entry. Entry 1 is the genesis entry (`init`: ledger id and node name).

The anchor (`ledger.anchor.json`, also MACed) pins the head: ledger id, node, head seq and head
mac. A writer holds an exclusive lock file (`ledger.lock`) plus the database's write lock (SQLite
BEGIN IMMEDIATE / PostgreSQL advisory lock), commits, and only then replaces the anchor (temp
file + fsync + rename) before letting go of the lock file. Readers check that the database
reaches the anchored head with the anchored mac: deleting the newest entries or restoring an
older copy of the database is detected. A database *ahead* of its anchor with valid macs can
only come from a crash between commit and anchor write (nobody else can mint entries), so it is
rolled forward. Anything else raises `LedgerUnavailable`; the journal never starts again from
zero. (A rollback of the whole state directory — database, key and anchor together — cannot be
told from a restored backup on one machine; keep an off-node copy of the anchor for that.)

The stored forms — canonical JSON, timestamps, the genesis payload, the anchor and an entry —
are `privacy.journal_format`'s; this module keeps the key, the anchor file, the lock and the chain.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError
from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from common.db import SQLITE_BEGIN_OPTION
from common.errors import AtollError
from privacy.journal_format import Anchor, Entry, Genesis, canonical, format_ts
from privacy.ledger_models import JournalRow

log = logging.getLogger(__name__)

ANCHOR = "ledger.anchor.json"
KEY_FILE = "ledger.key"
LOCK_FILE = "ledger.lock"
GENESIS = "0" * 64  # prev_mac of entry 1, head_mac of an empty journal
INIT = "init"  # kind of the genesis entry
LOCK_TIMEOUT_S = 60.0
_ENTRY_DOMAIN = b"atoll-ledger-journal/1\n"
_KEY_BYTES = 32
_LOCK_KEY = 0x4C45444745  # "LEDGE": PostgreSQL advisory lock serialising ledger writes
RESTORE = (
    "this node refuses to train or answer requests until it is fixed: restore its state "
    f"directory ({ANCHOR}, {KEY_FILE} and the ledger database, together) from the latest "
    "backup — the ledger never starts again from zero"
)


class LedgerUnavailable(AtollError, RuntimeError):
    """The ledger is missing, uninitialised or fails its integrity check: do not train."""


@dataclass
class Verified:
    """A journal read and checked: every mac valid, contiguous, reaching the anchored head."""

    anchor: Anchor
    entries: list[Entry]

    @property
    def ahead(self) -> int:
        """Entries committed after the anchor was last written (a crash in between)."""
        return len(self.entries) - self.anchor.head_seq


@dataclass
class JournalWriter:
    """Appends entries inside one serialised write transaction (see `Journal.write`)."""

    journal: Journal
    session: Session
    entries: list[Entry]
    appended: list[Entry] = field(default_factory=list)

    def append(self, kind: str, run_id: str | None, payload: BaseModel, at: datetime) -> Entry:
        head = self.entries[-1] if self.entries else None
        seq, prev = (head.seq + 1, head.mac) if head else (1, GENESIS)
        body, ts = canonical(payload), format_ts(at)
        mac = self.journal.mac(seq, kind, run_id, body, ts, prev)
        entry = Entry(seq, kind, run_id, body, ts, prev, mac)
        self.session.execute(
            insert(JournalRow).values(
                seq=seq,
                kind=kind,
                run_id=run_id,
                payload=body,
                created_at=ts,
                prev_mac=prev,
                mac=mac,
            )
        )
        self.entries.append(entry)
        self.appended.append(entry)
        return entry


def _write_atomically(path: Path, data: bytes) -> None:
    """Temp file + fsync + rename + fsync of the directory: the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Journal:
    """The authenticated journal of the ledger in `state_dir` (key and anchor live there)."""

    def __init__(self, state_dir: Path, key: bytes) -> None:
        self.state_dir = state_dir
        self._key = key
        self._verified: dict[int, Entry] = {}  # entries whose mac this process already checked

    # -- key and set-up --------------------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: Path) -> Journal:
        """The journal of an initialised ledger; refuses without its key (never re-created)."""
        path = state_dir / KEY_FILE
        try:
            key = bytes.fromhex(path.read_text(encoding="ascii").strip())
            private = not path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)
        except FileNotFoundError:
            raise LedgerUnavailable(
                f"privacy ledger key {path} is missing: without it no entry of the ledger can be "
                f"verified, and a new key would not verify the old entries; {RESTORE}"
            ) from None
        except (OSError, ValueError):
            key, private = b"", True
        if len(key) != _KEY_BYTES:
            raise LedgerUnavailable(
                f"privacy ledger key {path} is unreadable or damaged; {RESTORE}"
            )
        if not private:
            raise LedgerUnavailable(
                f"privacy ledger key {path} is readable by other users; run chmod 600 on it "
                "(anyone who can read it can forge ledger entries)"
            )
        return cls(state_dir, key)

    @staticmethod
    def ensure_absent(state_dir: Path) -> None:
        """Refuse to create a journal where a key or an anchor (a trace of a ledger) exists."""
        for trace in (state_dir / ANCHOR, state_dir / KEY_FILE):
            if trace.exists():
                raise LedgerUnavailable(
                    f"a privacy ledger already exists in {state_dir} ({trace.name} is there); it "
                    "can only be continued, not reset"
                )

    @classmethod
    def create(cls, state_dir: Path, node: str) -> Journal:
        """A new key and an anchor at entry 0; `write(..., genesis=<time>)` then writes entry 1."""
        cls.ensure_absent(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(_KEY_BYTES)
        fd = os.open(state_dir / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        journal = cls(state_dir, key)
        journal._write_anchor(str(uuid.uuid4()), node, 0, GENESIS)
        return journal

    def mac(
        self, seq: int, kind: str, run_id: str | None, payload: str, created_at: str, prev: str
    ) -> str:
        fields = [seq, kind, run_id, payload, created_at, prev]
        body = json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
        return hmac.new(self._key, _ENTRY_DOMAIN + body.encode(), hashlib.sha256).hexdigest()

    # -- anchor ----------------------------------------------------------------------------------
    def refuse(self, problem: str) -> LedgerUnavailable:
        return LedgerUnavailable(f"privacy ledger in {self.state_dir}: {problem}; {RESTORE}")

    def anchor(self) -> Anchor:
        path = self.state_dir / ANCHOR
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise self.refuse(f"its anchor {ANCHOR} is missing") from None
        except (OSError, ValueError):
            raise self.refuse(f"its anchor {ANCHOR} is unreadable") from None
        try:
            anchor = Anchor.model_validate(raw)
        except ValidationError:
            raise self.refuse(f"its anchor {ANCHOR} is malformed") from None
        expected = hmac.new(self._key, anchor.signed_bytes(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, anchor.mac):
            raise self.refuse(
                f"its anchor {ANCHOR} was modified (its MAC does not verify with {KEY_FILE})"
            )
        return anchor

    def _write_anchor(self, ledger_id: str, node: str, seq: int, head_mac: str) -> None:
        unsigned = Anchor(ledger_id=ledger_id, node=node, head_seq=seq, head_mac=head_mac)
        mac = hmac.new(self._key, unsigned.signed_bytes(), hashlib.sha256).hexdigest()
        anchored = unsigned.model_copy(update={"mac": mac})
        _write_atomically(self.state_dir / ANCHOR, (canonical(anchored) + "\n").encode())

    # -- reading ---------------------------------------------------------------------------------
    def read(self, session: Session, *, genesis: bool = False) -> Verified:
        """Anchor first, then the rows (a writer commits before it anchors), then check both."""
        anchor = self.anchor()
        rows = session.execute(select(JournalRow.__table__).order_by(JournalRow.seq)).all()
        entries = [
            Entry(r.seq, r.kind, r.run_id, r.payload, r.created_at, r.prev_mac, r.mac) for r in rows
        ]
        if genesis:
            if entries or anchor.head_seq != 0:
                raise in_use()
            return Verified(anchor, entries)
        if entries:
            self._check_genesis(entries[0], anchor)
        elif anchor.head_seq == 0:
            raise self.refuse("its initialisation never completed (the journal is empty)")
        self._check_chain(entries)
        self._check_head(entries, anchor)
        return Verified(anchor, entries)

    def _check_genesis(self, first: Entry, anchor: Anchor) -> None:
        try:
            genesis = Genesis.model_validate_json(first.payload)
        except ValidationError:
            genesis = None
        if first.kind != INIT or genesis is None:
            raise self.refuse("integrity check failed at entry 1: it is not the ledger's genesis")
        if genesis.ledger_id != anchor.ledger_id:
            raise self.refuse(
                "the ledger database does not belong to its anchor (replaced by another "
                "ledger's database, or reset)"
            )

    def _check_chain(self, entries: list[Entry]) -> None:
        prev = GENESIS
        for i, e in enumerate(entries, start=1):
            if e.seq != i:
                raise self.refuse(
                    f"integrity check failed at entry {i}: entry {e.seq} follows entry {i - 1} "
                    "(entries deleted or reordered)"
                )
            if e.prev_mac != prev:
                raise self.refuse(
                    f"integrity check failed at entry {i}: it does not chain to entry {i - 1} "
                    "(modified, deleted or reordered)"
                )
            if self._verified.get(i) == e:  # the very same fields already verified: skip the HMAC
                prev = e.mac
                continue
            expected = self.mac(e.seq, e.kind, e.run_id, e.payload, e.created_at, e.prev_mac)
            if not hmac.compare_digest(expected, e.mac):
                raise self.refuse(
                    f"integrity check failed at entry {i} ({e.kind}): its MAC does not verify "
                    f"with this node's {KEY_FILE} (modified, forged, or written under another key)"
                )
            self._verified[i] = e
            prev = e.mac

    def _check_head(self, entries: list[Entry], anchor: Anchor) -> None:
        if len(entries) < anchor.head_seq:
            raise self.refuse(
                f"its database ends at entry {len(entries)} but the anchor records entry "
                f"{anchor.head_seq} as written: the newest entries were deleted or an older copy "
                "of the database was restored"
            )
        at_anchor = entries[anchor.head_seq - 1].mac if anchor.head_seq else GENESIS
        if not hmac.compare_digest(at_anchor, anchor.head_mac):
            raise self.refuse(
                f"entry {anchor.head_seq} of its database is not the one its anchor recorded "
                "(rewritten, or the database was replaced)"
            )

    # -- writing ---------------------------------------------------------------------------------
    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """The journal's lock file: held from before the transaction until the anchor is written."""
        fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LedgerUnavailable(
                            f"privacy ledger in {self.state_dir} stayed locked by another writer "
                            f"for {LOCK_TIMEOUT_S:.0f} s; check for a hung node process"
                        ) from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextmanager
    def write(
        self, sessions: sessionmaker[Session], *, genesis: datetime | None = None
    ) -> Iterator[JournalWriter]:
        """One serialised write: verified journal in, appended entries committed, then anchored.

        `genesis` (the creation time) writes entry 1 of a new ledger into an empty database.
        """
        with self.exclusive():
            with sessions() as s, s.begin():
                conn = s.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
                verified = self.read(s, genesis=genesis is not None)
                writer = JournalWriter(self, s, verified.entries)
                if genesis is not None:
                    a = verified.anchor
                    writer.append(INIT, None, Genesis(ledger_id=a.ledger_id, node=a.node), genesis)
                yield writer
            head = writer.entries[-1] if writer.entries else None
            if head is not None and (writer.appended or verified.ahead):
                a = verified.anchor
                self._write_anchor(a.ledger_id, a.node, head.seq, head.mac)

    def roll_forward(self, sessions: sessionmaker[Session]) -> None:
        """Anchor entries committed by a writer that crashed before anchoring them (macs valid)."""
        with self.exclusive(), sessions() as s:
            verified = self.read(s)
            if verified.ahead > 0:
                head, a = verified.entries[-1], verified.anchor
                log.warning(
                    "privacy ledger in %s: anchor rolled forward from entry %d to %d (a write was "
                    "committed but not anchored, e.g. after a crash)",
                    self.state_dir,
                    a.head_seq,
                    head.seq,
                )
                self._write_anchor(a.ledger_id, a.node, head.seq, head.mac)


def in_use() -> LedgerUnavailable:
    return LedgerUnavailable(
        "that database already holds a privacy ledger; it can only be continued, not reset — "
        "open it with the state directory it belongs to"
    )
