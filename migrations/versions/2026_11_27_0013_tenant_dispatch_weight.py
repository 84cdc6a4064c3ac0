"""A tenant's dispatch weight: how many jobs it starts per turn of fair dispatch.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27 08:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenant", sa.Column("weight", sa.Integer(), server_default="1", nullable=False))
    op.create_check_constraint("weight_in_range", "tenant", "weight BETWEEN 1 AND 100")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_tenant_weight_in_range"), "tenant", type_="check")
    op.drop_column("tenant", "weight")
