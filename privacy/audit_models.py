"""ORM table of the tamper-evident audit logs (see `privacy.audit` for the chain and signatures).

Timestamps and details are stored as the exact text that was hashed (fixed-width ISO-8601 UTC and
canonical JSON), so no driver or JSONB normalisation can make a genuine entry fail verification;
the fixed-width timestamp text still sorts and range-filters correctly.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from privacy.models import PrivacyBase

LOG_ID_LENGTH = 100
ACTOR_LENGTH = 200
ACTION_LENGTH = 100
SUBJECT_LENGTH = 300
TS_LENGTH = 27  # 2025-01-31T12:00:00.000000Z
HASH_LENGTH = 64  # sha256 hex
SIGNATURE_LENGTH = 128  # Ed25519 signature hex
KEY_ID_LENGTH = 64  # sha256 hex of the raw public key


class AuditEntryRow(PrivacyBase):
    """One signed, hash-chained entry; `seq` is contiguous from 1 within its `log_id`."""

    __tablename__ = "audit_entries"
    __table_args__ = (
        # The last line of defence against forks: two writers can never both take a seq.
        UniqueConstraint("log_id", "seq", name="uq_audit_entries_log_id_seq"),
        Index("ix_audit_entries_log_id_ts", "log_id", "ts"),
        Index("ix_audit_entries_log_id_actor", "log_id", "actor"),
        Index("ix_audit_entries_log_id_action", "log_id", "action"),
        Index("ix_audit_entries_log_id_subject", "log_id", "subject"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    log_id: Mapped[str] = mapped_column(String(LOG_ID_LENGTH))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[str] = mapped_column(String(TS_LENGTH))
    actor: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    action: Mapped[str] = mapped_column(String(ACTION_LENGTH))
    subject: Mapped[str] = mapped_column(String(SUBJECT_LENGTH))
    details: Mapped[str] = mapped_column(Text)  # canonical JSON, exactly as hashed
    prev_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    signature: Mapped[str] = mapped_column(String(SIGNATURE_LENGTH))
    key_id: Mapped[str] = mapped_column(String(KEY_ID_LENGTH))

    def __repr__(self) -> str:
        return f"AuditEntryRow(log_id={self.log_id!r}, seq={self.seq}, action={self.action!r})"
