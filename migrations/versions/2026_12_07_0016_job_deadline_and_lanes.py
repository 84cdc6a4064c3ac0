"""Deadlines and priority lanes: a job's `deadline_at` (from `Cancel-After`) and `priority`,
and the lanes a tenant may submit to.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "job",
        sa.Column("priority", sa.String(length=10), nullable=False, server_default="normal"),
    )
    op.create_check_constraint("priority_known", "job", "priority IN ('high', 'normal', 'low')")
    # The sweeper's fallback: unfinished jobs whose deadline passed.
    op.create_index(
        "ix_job_unfinished_deadline_at",
        "job",
        ["deadline_at"],
        postgresql_where=sa.text("deadline_at IS NOT NULL AND status IN ('queued', 'running')"),
    )
    op.add_column(
        "tenant",
        sa.Column(
            "allowed_lanes",
            postgresql.JSONB(),
            nullable=False,
            server_default=sa.text('\'["normal", "low"]\'::jsonb'),
        ),
    )


def downgrade() -> None:
    op.drop_column("tenant", "allowed_lanes")
    op.drop_index("ix_job_unfinished_deadline_at", table_name="job")
    op.drop_constraint(op.f("ck_job_priority_known"), "job", type_="check")
    op.drop_column("job", "priority")
    op.drop_column("job", "deadline_at")
