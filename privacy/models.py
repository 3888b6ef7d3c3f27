"""Declarative base for the privacy stores (budget ledger, audit chain).

These tables live in a node's own database (its state directory) and in the coordinator's
database; they have their own Alembic environment (`privacy/migrations`) and version table so a
node never carries registry tables.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from common.db import NAMING_CONVENTION, JSONType


class PrivacyBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType}
