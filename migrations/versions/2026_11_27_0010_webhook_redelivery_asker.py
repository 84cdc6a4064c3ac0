"""Redeliveries record who asked: on the delivery's round, and on each attempt of it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 05:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("webhook_delivery", sa.Column("round_requested_by", sa.Text(), nullable=True))
    op.add_column("webhook_attempt", sa.Column("requested_by", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("webhook_attempt", "requested_by")
    op.drop_column("webhook_delivery", "round_requested_by")
