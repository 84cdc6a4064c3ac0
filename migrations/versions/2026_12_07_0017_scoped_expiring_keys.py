"""Scoped, expiring API keys: `api_key.scopes` and `api_key.expires_at`.

Existing keys get the default scopes (everything but `keys:manage`), which is all they could
do before: no key could manage keys until this revision.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "api_key",
        sa.Column(
            "scopes",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text(
                '\'["relight:submit", "requests:read", "requests:cancel", "webhooks:manage", '
                '"account:read"]\'::jsonb'
            ),
            nullable=False,
        ),
    )
    op.add_column("api_key", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("api_key", "expires_at")
    op.drop_column("api_key", "scopes")
