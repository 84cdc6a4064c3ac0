"""Reserve at submit, refund on failure or cancel: each a single conditional UPDATE.

The ledger (one row per movement) arrives with the credits feature; until then the tenant's
balance is the only record, and every movement happens in the same transaction as the job's
state change that causes it, so a retry can never pay or refund twice.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relight.errors import Forbidden, InsufficientCredits
from relight.models import Tenant, TenantStatus


async def reserve_credits(session: AsyncSession, tenant_id: uuid.UUID, amount: int) -> int:
    """Take `amount` from an active tenant's balance, or raise; returns the new balance."""
    result = await session.execute(
        update(Tenant)
        .where(
            Tenant.id == tenant_id,
            Tenant.status == TenantStatus.ACTIVE.value,
            Tenant.credit_balance >= amount,
        )
        .values(credit_balance=Tenant.credit_balance - amount)
        .returning(Tenant.credit_balance)
    )
    balance = result.scalar_one_or_none()
    if balance is not None:
        return balance
    row = (
        await session.execute(
            select(Tenant.status, Tenant.credit_balance).where(Tenant.id == tenant_id)
        )
    ).one()
    if row.status != TenantStatus.ACTIVE.value:
        raise Forbidden("this account is suspended", code="tenant_suspended")
    raise InsufficientCredits(
        f"insufficient credits: this request costs {amount}, the balance is {row.credit_balance}",
        extra={"required": amount, "available": row.credit_balance},
    )


async def refund_credits(session: AsyncSession, tenant_id: uuid.UUID, amount: int) -> None:
    """Give `amount` back; call only inside the transaction that ends the job unpaid."""
    if amount:
        await session.execute(
            update(Tenant)
            .where(Tenant.id == tenant_id)
            .values(credit_balance=Tenant.credit_balance + amount)
        )


async def get_balance(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    balance = await session.scalar(select(Tenant.credit_balance).where(Tenant.id == tenant_id))
    return int(balance or 0)
