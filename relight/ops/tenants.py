"""Tenants with their last day's usage, in one query, for operators."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from relight.core.models import Tenant
from relight.ops import repository


@dataclass(frozen=True)
class TenantUsage:
    tenant: Tenant
    requests: int  # submitted since `since`
    succeeded: int
    failed: int
    credits_charged: int


async def tenants_with_usage(session: AsyncSession, since: datetime) -> list[TenantUsage]:
    """Every tenant, by name, with the requests it submitted since `since`."""
    return [
        TenantUsage(
            tenant=tenant,
            requests=requests,
            succeeded=succeeded,
            failed=failed,
            credits_charged=charged,
        )
        for tenant, requests, succeeded, failed, charged in await repository.tenants_with_usage(
            session, since
        )
    ]
