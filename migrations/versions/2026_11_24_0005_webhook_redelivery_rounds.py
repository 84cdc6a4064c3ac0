"""Webhook redelivery starts a new round of retries: remember where the round began.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 05:22:21.752852
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "webhook_delivery",
        sa.Column("round_start", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("webhook_delivery", "round_start")
