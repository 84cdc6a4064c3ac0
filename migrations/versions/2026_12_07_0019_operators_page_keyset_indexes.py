"""Indexes for the operators' page's keyset paging: newest requests first, and the failing
webhook deliveries newest first, read a page of the index instead of sorting the whole table.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_job_created_at_id", "job", ["created_at", "id"])
    op.create_index(
        "ix_webhook_delivery_failing_created_at_id",
        "webhook_delivery",
        ["created_at", "id"],
        postgresql_where=sa.text("status = 'failed' OR (status = 'pending' AND attempts > 0)"),
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_delivery_failing_created_at_id", table_name="webhook_delivery")
    op.drop_index("ix_job_created_at_id", table_name="job")
