"""audit_entries: the tamper-evident audit logs (a branch off the privacy base).

Revision ID: p002_audit
Revises: p000_base
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "p002_audit"
down_revision: str | None = "p000_base"
branch_labels: str | Sequence[str] | None = ("audit",)
depends_on: str | Sequence[str] | None = None

TABLE = "audit_entries"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("log_id", sa.String(length=100), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.String(length=27), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_entries"),
        sa.UniqueConstraint("log_id", "seq", name="uq_audit_entries_log_id_seq"),
    )
    for column in ("ts", "actor", "action", "subject"):
        op.create_index(f"ix_{TABLE}_log_id_{column}", TABLE, ["log_id", column])


def downgrade() -> None:
    for column in ("ts", "actor", "action", "subject"):
        op.drop_index(f"ix_{TABLE}_log_id_{column}", table_name=TABLE)
    op.drop_table(TABLE)
