"""analytics_queries: every federated-analytics query, its ε per node, intervals and result.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "analytics_queries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("contract_name", sa.String(length=100), nullable=False),
        sa.Column("contract_hash", sa.String(length=64), nullable=False),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("nodes", JSONType, nullable=False),
        sa.Column("result", JSONType, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_analytics_queries"),
    )


def downgrade() -> None:
    op.drop_table("analytics_queries")
