"""Tenants with their last day's usage, in one query, for operators."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from relight.models import Job, JobStatus, Tenant


@dataclass(frozen=True)
class TenantUsage:
    tenant: Tenant
    requests: int  # submitted since `since`
    succeeded: int
    failed: int
    credits_charged: int


async def tenants_with_usage(session: AsyncSession, since: datetime) -> list[TenantUsage]:
    """Every tenant, by name, with the requests it submitted since `since`."""
    recent = Job.created_at >= since
    usage = (
        select(
            Job.tenant_id,
            func.count().label("requests"),
            func.count().filter(Job.status == JobStatus.SUCCEEDED.value).label("succeeded"),
            func.count().filter(Job.status == JobStatus.FAILED.value).label("failed"),
            func.coalesce(func.sum(Job.credits_charged), 0).label("charged"),
        )
        .where(recent)
        .group_by(Job.tenant_id)
        .subquery()
    )
    rows = await session.execute(
        select(Tenant, usage.c.requests, usage.c.succeeded, usage.c.failed, usage.c.charged)
        .outerjoin(usage, usage.c.tenant_id == Tenant.id)
        .order_by(Tenant.name)
    )
    return [
        TenantUsage(
            tenant=tenant,
            requests=int(requests or 0),
            succeeded=int(succeeded or 0),
            failed=int(failed or 0),
            credits_charged=int(charged or 0),
        )
        for tenant, requests, succeeded, failed, charged in rows
    ]
