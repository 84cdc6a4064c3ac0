"""A job's background image (IC-Light fbc): the URL it came from, or where it is stored.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27 06:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("background_url", sa.Text(), nullable=True))
    op.add_column("job", sa.Column("background_storage_key", sa.String(length=300), nullable=True))
    # For the retention sweep, as ix_job_stored_input_finished_at (migration 0008) for inputs.
    op.create_index(
        "ix_job_stored_background_finished_at",
        "job",
        ["finished_at"],
        postgresql_where=sa.text("background_storage_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_job_stored_background_finished_at", table_name="job")
    op.drop_column("job", "background_storage_key")
    op.drop_column("job", "background_url")
