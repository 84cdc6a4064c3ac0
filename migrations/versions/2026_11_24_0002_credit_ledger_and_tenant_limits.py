"""Credit ledger (credit_entry) and per-tenant limits (rate, burst, in-flight cap).

Existing balances become an opening `grant` entry each, and `active_jobs` is counted from the
queued and running jobs, so the ledger invariant holds from the first revision that has it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 04:38:18.430330
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "credit_entry",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind IN ('grant', 'reserve', 'charge', 'refund', 'adjust')",
            name=op.f("ck_credit_entry_kind_known"),
        ),
        sa.CheckConstraint(
            "balance_after >= 0", name=op.f("ck_credit_entry_balance_after_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name=op.f("fk_credit_entry_job_id_job"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_credit_entry_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_entry")),
    )
    op.create_index(
        "ix_credit_entry_tenant_id_id", "credit_entry", ["tenant_id", "id"], unique=False
    )
    op.create_index(
        "uq_credit_entry_job_id_kind",
        "credit_entry",
        ["job_id", "kind"],
        unique=True,
        postgresql_where=sa.text("job_id IS NOT NULL AND kind IN ('reserve', 'charge', 'refund')"),
    )
    op.add_column(
        "tenant", sa.Column("active_jobs", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "tenant",
        sa.Column("requests_per_minute", sa.Integer(), server_default="120", nullable=False),
    )
    op.add_column("tenant", sa.Column("burst", sa.Integer(), server_default="30", nullable=False))
    op.add_column(
        "tenant", sa.Column("max_in_flight", sa.Integer(), server_default="20", nullable=False)
    )
    op.create_check_constraint("active_jobs_non_negative", "tenant", "active_jobs >= 0")
    op.create_check_constraint(
        "limits_positive", "tenant", "requests_per_minute > 0 AND burst > 0 AND max_in_flight > 0"
    )
    op.execute(
        """
        INSERT INTO credit_entry (id, tenant_id, kind, amount, balance_after, reason)
        SELECT gen_random_uuid(), id, 'grant', credit_balance, credit_balance, 'opening balance'
        FROM tenant WHERE credit_balance > 0
        """
    )
    op.execute(
        """
        UPDATE tenant SET active_jobs = (
            SELECT count(*) FROM job
            WHERE job.tenant_id = tenant.id AND job.status IN ('queued', 'running')
        )
        """
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_tenant_limits_positive"), "tenant", type_="check")
    op.drop_constraint(op.f("ck_tenant_active_jobs_non_negative"), "tenant", type_="check")
    op.drop_column("tenant", "max_in_flight")
    op.drop_column("tenant", "burst")
    op.drop_column("tenant", "requests_per_minute")
    op.drop_column("tenant", "active_jobs")
    op.drop_index(
        "uq_credit_entry_job_id_kind",
        table_name="credit_entry",
        postgresql_where=sa.text("job_id IS NOT NULL AND kind IN ('reserve', 'charge', 'refund')"),
    )
    op.drop_index("ix_credit_entry_tenant_id_id", table_name="credit_entry")
    op.drop_table("credit_entry")
