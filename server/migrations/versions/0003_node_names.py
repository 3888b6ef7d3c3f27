"""node_names: the coordinator's record of which SuperLink node id was registered under which name.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "node_names",
        sa.Column("node_id", sa.String(length=20), nullable=False),  # a uint64: text
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("public_key_sha256", sa.String(length=64), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node_id", name="pk_node_names"),
        sa.UniqueConstraint("name", name="uq_node_names_name"),
    )


def downgrade() -> None:
    op.drop_table("node_names")
