"""ORM tables of the coordinator's database (model registry now; privacy ledger and audit later).

Every table shares `Base.metadata`, whose naming convention gives constraints the same names on
SQLite and PostgreSQL, so Alembic migrations can refer to them by name.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Integer, LargeBinary, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.db import NAMING_CONVENTION, JSONType, UTCDateTime, utcnow


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONType, list[dict[str, Any]]: JSONType}


class ModelVersion(Base):
    """One published, aggregated model: weights plus everything needed to audit and serve it."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(32))
    contract_hash: Mapped[str] = mapped_column(String(64))
    contract_json: Mapped[str] = mapped_column(Text)
    model_kind: Mapped[str] = mapped_column(String(32))
    n_features: Mapped[int] = mapped_column(Integer)
    # Deferred: listing models and reading cards never pulls the blobs.
    weights: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)
    participants: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    privacy: Mapped[dict[str, Any]] = mapped_column(JSONType)
    run: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Ed25519 signature (hex) by the coordinator's publishing key over the card and contract
    # (server.registry_signing); NULL only on rows published before signing existed
    signature: Mapped[str | None] = mapped_column(String(128), nullable=True)

    def __repr__(self) -> str:
        return f"ModelVersion(name={self.name!r}, version={self.version})"
