"""ORM table of the scoring API's keys, in the coordinator database (same `Base` as the registry).

A row never holds a usable secret: only a per-key random salt and HMAC-SHA256(salt, secret). The
public `key_id` is part of every key string, so authentication is one indexed lookup plus one
constant-time comparison. Rows are never deleted: revoked keys stay for the record.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from common.db import UTCDateTime, utcnow
from server.registry_models import Base


class ApiKey(Base):
    """One API key: who it is for, what it may do, and when it was issued, rotated, revoked."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    salt: Mapped[bytes] = mapped_column(LargeBinary(32))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def __repr__(self) -> str:  # never the salt or hash
        return f"ApiKey(key_id={self.key_id!r}, name={self.name!r}, role={self.role!r})"
