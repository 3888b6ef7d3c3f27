"""ledger_journal: the node ledger as one authenticated, append-only journal (ledger branch).

Every mutation (policy, reservation opened / closed / expired, release, refusal) is one entry,
HMAC-chained under a key kept outside the database (see `privacy.journal`). The p001 tables
`ledger_meta/_policies/_reservations/_events/_refusals` are left in place, unused: a database
still holding an old-format ledger is recognised and refused rather than silently emptied.
`privacy_spend_reports` (coordinator side) is untouched.

Revision ID: p003_journal
Revises: p001_ledger
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "p003_journal"
down_revision: str | None = "p001_ledger"
branch_labels: str | Sequence[str] | None = None  # on the "ledger" branch through p001_ledger
depends_on: str | Sequence[str] | None = None

TABLE = "ledger_journal"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.String(27), nullable=False),
        sa.Column("prev_mac", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_ledger_journal"),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
