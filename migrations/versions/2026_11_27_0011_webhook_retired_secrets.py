"""Every rotated-out webhook secret keeps signing until its own expiry, not only the last one.

`tenant.webhook_retired_secrets` is a JSON list, newest first, of `{"secret", "expires_at"}`
(ISO 8601); it replaces the single `webhook_secret_previous` and its expiry, whose value (when
set) becomes the list's one entry.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27 05:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "tenant",
        sa.Column(
            "webhook_retired_secrets",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
    )
    op.execute(
        """
        UPDATE tenant SET webhook_retired_secrets = jsonb_build_array(jsonb_build_object(
            'secret', webhook_secret_previous,
            'expires_at', to_jsonb(webhook_secret_previous_expires_at)))
        WHERE webhook_secret_previous IS NOT NULL
          AND webhook_secret_previous_expires_at IS NOT NULL
        """
    )
    op.drop_column("tenant", "webhook_secret_previous_expires_at")
    op.drop_column("tenant", "webhook_secret_previous")


def downgrade() -> None:
    op.add_column(
        "tenant", sa.Column("webhook_secret_previous", sa.String(length=100), nullable=True)
    )
    op.add_column(
        "tenant",
        sa.Column("webhook_secret_previous_expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    # Only the newest retired secret fits the old columns.
    op.execute(
        """
        UPDATE tenant SET
            webhook_secret_previous = webhook_retired_secrets -> 0 ->> 'secret',
            webhook_secret_previous_expires_at =
                (webhook_retired_secrets -> 0 ->> 'expires_at')::timestamptz
        WHERE jsonb_array_length(webhook_retired_secrets) > 0
        """
    )
    op.drop_column("tenant", "webhook_retired_secrets")
