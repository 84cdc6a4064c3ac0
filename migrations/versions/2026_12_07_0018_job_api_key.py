"""The API key that submitted a job, for usage by key (`GET /v2/usage?group_by=key`).

Nullable: jobs from before this column, and from keys since deleted, name none.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Adding a nullable column without a default rewrites nothing; no index: usage reads a
    # tenant's jobs of a window through the tenant's own index, then groups them.
    op.add_column(
        "job",
        sa.Column(
            "api_key_id",
            sa.Uuid(),
            sa.ForeignKey(
                "api_key.id", name=op.f("fk_job_api_key_id_api_key"), ondelete="SET NULL"
            ),
            nullable=True,
        ),
    )


def downgrade() -> None:
    op.drop_column("job", "api_key_id")
