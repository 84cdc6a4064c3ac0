"""Backend routing: the backends a tenant may use, and every backend call recorded on the job.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 05:09:21.418968
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "job",
        sa.Column(
            "backend_calls",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
    )
    op.add_column(
        "tenant",
        sa.Column(
            "allowed_backends",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text('\'["gpu", "segmind", "local"]\'::jsonb'),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_column("tenant", "allowed_backends")
    op.drop_column("job", "backend_calls")
