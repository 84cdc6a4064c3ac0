"""Batches: a set of ordinary requests sharing a batch id, and its one `batch.completed` webhook.

`batch` holds what the set shares (its webhook, its Idempotency-Key) and `completed_at`, set
once, by the transaction that ends its last item. `job.batch_id` ties an item to its batch. A
webhook delivery now belongs to a job or to a batch (`batch.completed`), so its `job_id` may be
NULL when `batch_id` is set.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batch",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column(
            "webhook_events",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("http_request_id", sa.String(length=128), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenant.id"], name=op.f("fk_batch_tenant_id_tenant"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch")),
        sa.UniqueConstraint(
            "tenant_id", "idempotency_key", name=op.f("uq_batch_tenant_id_idempotency_key")
        ),
    )
    op.create_index("ix_batch_tenant_id_id", "batch", ["tenant_id", "id"], unique=False)
    op.add_column("job", sa.Column("batch_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_job_batch_id_batch"), "job", "batch", ["batch_id"], ["id"], ondelete="SET NULL"
    )
    op.create_index(
        "ix_job_batch_id",
        "job",
        ["batch_id"],
        unique=False,
        postgresql_where=sa.text("batch_id IS NOT NULL"),
    )
    op.add_column("webhook_delivery", sa.Column("batch_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_webhook_delivery_batch_id_batch"),
        "webhook_delivery",
        "batch",
        ["batch_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.alter_column("webhook_delivery", "job_id", existing_type=sa.Uuid(), nullable=True)
    op.create_unique_constraint(
        op.f("uq_webhook_delivery_batch_id_event"), "webhook_delivery", ["batch_id", "event"]
    )
    op.create_check_constraint(
        op.f("ck_webhook_delivery_job_or_batch"),
        "webhook_delivery",
        "job_id IS NOT NULL OR batch_id IS NOT NULL",
    )


def downgrade() -> None:
    op.execute("DELETE FROM webhook_delivery WHERE job_id IS NULL")
    op.drop_constraint(op.f("ck_webhook_delivery_job_or_batch"), "webhook_delivery", type_="check")
    op.drop_constraint(
        op.f("uq_webhook_delivery_batch_id_event"), "webhook_delivery", type_="unique"
    )
    op.alter_column("webhook_delivery", "job_id", existing_type=sa.Uuid(), nullable=False)
    op.drop_constraint(
        op.f("fk_webhook_delivery_batch_id_batch"), "webhook_delivery", type_="foreignkey"
    )
    op.drop_column("webhook_delivery", "batch_id")
    op.drop_index("ix_job_batch_id", table_name="job")
    op.drop_constraint(op.f("fk_job_batch_id_batch"), "job", type_="foreignkey")
    op.drop_column("job", "batch_id")
    op.drop_index("ix_batch_tenant_id_id", table_name="batch")
    op.drop_table("batch")
