"""Base of the privacy stores' migrations (ledger and audit branch off here).

Revision ID: p000_base
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "p000_base"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
