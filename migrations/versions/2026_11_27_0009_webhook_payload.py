"""Webhook bodies are fixed when the event happens: the delivery row keeps the bytes it sends.

Rows made before this revision have no payload; they are rendered at their next attempt, as
they always were.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("webhook_delivery", sa.Column("payload", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("webhook_delivery", "payload")
