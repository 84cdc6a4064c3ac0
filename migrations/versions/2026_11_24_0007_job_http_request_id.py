"""Jobs keep the X-Request-ID of the HTTP request that submitted them, for their log lines.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 07:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable without a default: adding it rewrites nothing, whatever the table's size.
    op.add_column("job", sa.Column("http_request_id", sa.String(128), nullable=True))


def downgrade() -> None:
    op.drop_column("job", "http_request_id")
