"""Sweeper indexes: its periodic queries stay index lookups however long the job history.

Without them, taking back expired leases and finding stored images past retention scan the
whole `job` table on every sweep (about 20 ms each with 100 000 jobs, growing with history).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 08:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_job_running_lease_expires_at",
        "job",
        ["lease_expires_at"],
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index(
        "ix_job_stored_input_finished_at",
        "job",
        ["finished_at"],
        postgresql_where=sa.text("input_storage_key IS NOT NULL"),
    )
    op.create_index(
        "ix_job_output_live_job_id",
        "job_output",
        ["job_id"],
        postgresql_where=sa.text("deleted_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_job_output_live_job_id", table_name="job_output")
    op.drop_index("ix_job_stored_input_finished_at", table_name="job")
    op.drop_index("ix_job_running_lease_expires_at", table_name="job")
