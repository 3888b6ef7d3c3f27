"""analytics_submissions (queries submitted through the API, polled until answered) and
drift_checks (a model's DP reference histograms and every drift check against them).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "analytics_submissions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("submitted_by", sa.String(length=100), nullable=False),
        sa.Column("contract_hash", sa.String(length=64), nullable=False),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("query_id", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_analytics_submissions"),
    )
    op.create_table(
        "drift_checks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("contract_hash", sa.String(length=64), nullable=False),
        sa.Column("histograms", JSONType, nullable=False),
        sa.Column("report", JSONType, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_drift_checks"),
    )
    op.create_index("ix_drift_checks_model", "drift_checks", ["model_name", "model_version"])


def downgrade() -> None:
    op.drop_index("ix_drift_checks_model", table_name="drift_checks")
    op.drop_table("drift_checks")
    op.drop_table("analytics_submissions")
