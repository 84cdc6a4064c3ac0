"""The GPU node's model digest on a job: which weights rendered its images.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("model_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("job", "model_digest")
