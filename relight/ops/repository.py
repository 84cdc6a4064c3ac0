"""Every query of the operators' pages: the overview's numbers, requests across tenants (with
their ledger), failing webhook deliveries, and tenants with their usage. Read-only; each number
is one query over the job table. Lists are keyset-paged on `(created_at, id)`, never offset."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypeVarTuple

from sqlalchemy import ColumnElement, Float, Select, and_, cast, extract, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from relight.core.models import (
    Batch,
    CreditEntry,
    CreditKind,
    Job,
    JobStatus,
    Tenant,
    WebhookDelivery,
    WebhookStatus,
)

# (count, median, 95th percentile) in seconds; the percentiles are None when nothing counted.
Spread = tuple[int, float | None, float | None]


def _seconds(later: Any, earlier: Any) -> ColumnElement[float]:
    """`later - earlier` in seconds (columns or a bound datetime)."""
    return cast(extract("epoch", later - earlier), Float)


async def _spread(
    session: AsyncSession, seconds: ColumnElement[float], *conditions: ColumnElement[bool]
) -> Spread:
    row = (
        await session.execute(
            select(
                func.count(),
                func.percentile_cont(0.5).within_group(seconds),
                func.percentile_cont(0.95).within_group(seconds),
            ).where(*conditions)
        )
    ).one()
    count, p50, p95 = row
    return (
        int(count),
        float(p50) if p50 is not None else None,
        float(p95) if p95 is not None else None,
    )


async def queue_waits(session: AsyncSession, since: datetime, now: datetime) -> Spread:
    """`started_at - created_at` of the jobs started in `[since, now)`."""
    return await _spread(
        session,
        _seconds(Job.started_at, Job.created_at),
        Job.started_at.is_not(None),
        Job.started_at >= since,
        Job.started_at < now,
    )


async def run_times(session: AsyncSession, since: datetime, now: datetime) -> Spread:
    """`finished_at - started_at` of the jobs that succeeded in `[since, now)`."""
    return await _spread(
        session,
        _seconds(Job.finished_at, Job.started_at),
        Job.started_at.is_not(None),
        Job.status == JobStatus.SUCCEEDED.value,
        Job.finished_at >= since,
        Job.finished_at < now,
    )


async def count_by_status(session: AsyncSession, since: datetime, now: datetime) -> dict[str, int]:
    """Jobs created in `[since, now)` by status (every status present)."""
    rows = await session.execute(
        select(Job.status, func.count())
        .where(Job.created_at >= since, Job.created_at < now)
        .group_by(Job.status)
    )
    counts = {status.value: 0 for status in JobStatus}
    for status, count in rows:
        counts[status] = int(count)
    return counts


async def finished_count(
    session: AsyncSession, status: JobStatus, since: datetime, now: datetime
) -> int:
    """Jobs that ended `status` in `[since, now)`."""
    value = await session.scalar(
        select(func.count()).where(
            Job.status == status.value, Job.finished_at >= since, Job.finished_at < now
        )
    )
    return int(value or 0)


async def live_counts(session: AsyncSession) -> dict[str, int]:
    """Jobs queued and running now, by status (absent: none)."""
    live = await session.execute(
        select(Job.status, func.count())
        .where(Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
        .group_by(Job.status)
    )
    return {status: int(count) for status, count in live}


async def error_counts(
    session: AsyncSession, since: datetime, now: datetime, limit: int
) -> list[tuple[str, int]]:
    """Jobs failed in `[since, now)` by error code, most first (the `limit` commonest)."""
    code = func.coalesce(Job.error_code, "unknown")
    rows = await session.execute(
        select(code, func.count())
        .where(
            Job.status == JobStatus.FAILED.value, Job.finished_at >= since, Job.finished_at < now
        )
        .group_by(code)
        .order_by(func.count().desc(), code)
        .limit(limit)
    )
    return [(str(error), int(count)) for error, count in rows]


async def hourly_counts(
    session: AsyncSession, since: datetime, now: datetime
) -> list[tuple[int, str, int]]:
    """`(hours after since, status, count)` of the jobs that succeeded or failed in
    `[since, now)`, for each hour and status that had any."""
    hour = func.floor(_seconds(Job.finished_at, since) / 3600)
    rows = await session.execute(
        select(hour, Job.status, func.count())
        .where(
            Job.status.in_([JobStatus.SUCCEEDED.value, JobStatus.FAILED.value]),
            Job.finished_at >= since,
            Job.finished_at < now,
        )
        .group_by(hour, Job.status)
    )
    return [(int(index), str(status), int(count)) for index, status, count in rows]


Columns = TypeVarTuple("Columns")
# A page boundary: the `(created_at, id)` of the row the page starts after.
Cursor = tuple[datetime, uuid.UUID]


def _page(
    query: Select[*Columns],
    created_at: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[uuid.UUID],
    *,
    older_than: Cursor | None,
    newer_than: Cursor | None,
    limit: int,
) -> Select[*Columns]:
    """`query` keyset-paged on `(created_at, id)`: rows older than one cursor, newest first,
    or newer than the other, oldest first (the caller turns those round); `limit` rows."""
    key = tuple_(created_at, row_id)
    if newer_than is not None:
        return query.where(key > tuple_(*newer_than)).order_by(created_at, row_id).limit(limit)
    if older_than is not None:
        query = query.where(key < tuple_(*older_than))
    return query.order_by(created_at.desc(), row_id.desc()).limit(limit)


async def jobs_with_tenant_names(
    session: AsyncSession,
    *,
    job_id: uuid.UUID | None = None,
    tenant: str | None,
    status: str | None,
    backend: str | None,
    backend_side: str = "either",
    older_than: Cursor | None = None,
    newer_than: Cursor | None = None,
    limit: int,
) -> list[tuple[Job, str]]:
    """Jobs of any tenant (with its name), filtered by id, tenant name, status and backend
    (`backend_side`: the one `used`, the one `requested`, or `either`); a page of `limit`
    rows after a cursor (see `_page`)."""
    query = select(Job, Tenant.name).join(Tenant, Tenant.id == Job.tenant_id)
    if job_id is not None:
        query = query.where(Job.id == job_id)
    if tenant:
        query = query.where(Tenant.name == tenant)
    if status:
        query = query.where(Job.status == status)
    if backend:
        used, requested = Job.backend_used == backend, Job.backend_requested == backend
        side = {"used": used, "requested": requested}.get(backend_side, or_(used, requested))
        query = query.where(side)
    paged = _page(
        query,
        Job.created_at,
        Job.id,
        older_than=older_than,
        newer_than=newer_than,
        limit=limit,
    )
    return [(job, name) for job, name in await session.execute(paged)]


async def ledger_by_kind(session: AsyncSession, job_id: uuid.UUID) -> dict[str, int]:
    """The sum of a job's ledger entries by kind (reserve, charge, refund; absent: none)."""
    rows = await session.execute(
        select(CreditEntry.kind, func.sum(CreditEntry.amount))
        .where(
            CreditEntry.job_id == job_id,
            # The kinds the partial unique index on (job_id, kind) covers.
            CreditEntry.kind.in_(
                [CreditKind.RESERVE.value, CreditKind.CHARGE.value, CreditKind.REFUND.value]
            ),
        )
        .group_by(CreditEntry.kind)
    )
    return {str(kind): int(total) for kind, total in rows}


async def failing_deliveries(
    session: AsyncSession,
    *,
    older_than: Cursor | None = None,
    newer_than: Cursor | None = None,
    limit: int,
) -> list[tuple[WebhookDelivery, str]]:
    """Webhook deliveries that failed for good, or failed at least once and wait for a retry,
    with their tenant's name; a page of `limit` rows after a cursor (see `_page`)."""
    query = (
        select(WebhookDelivery, Tenant.name)
        .join(Tenant, Tenant.id == WebhookDelivery.tenant_id)
        .where(
            or_(
                WebhookDelivery.status == WebhookStatus.FAILED.value,
                and_(
                    WebhookDelivery.status == WebhookStatus.PENDING.value,
                    WebhookDelivery.attempts > 0,
                ),
            )
        )
    )
    paged = _page(
        query,
        WebhookDelivery.created_at,
        WebhookDelivery.id,
        older_than=older_than,
        newer_than=newer_than,
        limit=limit,
    )
    return [(delivery, name) for delivery, name in await session.execute(paged)]


async def job_with_tenant_name(session: AsyncSession, job_id: uuid.UUID) -> tuple[Job, str] | None:
    """Any tenant's job, with its tenant's name."""
    row = (
        await session.execute(
            select(Job, Tenant.name)
            .join(Tenant, Tenant.id == Job.tenant_id)
            .where(Job.id == job_id)
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1])


async def batch_with_tenant_name(
    session: AsyncSession, batch_id: uuid.UUID
) -> tuple[Batch, str] | None:
    """Any tenant's batch, with its tenant's name."""
    row = (
        await session.execute(
            select(Batch, Tenant.name)
            .join(Tenant, Tenant.id == Batch.tenant_id)
            .where(Batch.id == batch_id)
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1])


async def tenants_with_usage(
    session: AsyncSession, since: datetime
) -> list[tuple[Tenant, int, int, int, int]]:
    """Every tenant by name, with `(requests, succeeded, failed, credits charged)` of the jobs
    it submitted since `since`."""
    usage = (
        select(
            Job.tenant_id,
            func.count().label("requests"),
            func.count().filter(Job.status == JobStatus.SUCCEEDED.value).label("succeeded"),
            func.count().filter(Job.status == JobStatus.FAILED.value).label("failed"),
            func.coalesce(func.sum(Job.credits_charged), 0).label("charged"),
        )
        .where(Job.created_at >= since)
        .group_by(Job.tenant_id)
        .subquery()
    )
    rows = await session.execute(
        select(Tenant, usage.c.requests, usage.c.succeeded, usage.c.failed, usage.c.charged)
        .outerjoin(usage, usage.c.tenant_id == Tenant.id)
        .order_by(Tenant.name)
    )
    return [
        (
            tenant,
            int(requests or 0),
            int(succeeded or 0),
            int(failed or 0),
            int(charged or 0),
        )
        for tenant, requests, succeeded, failed, charged in rows
    ]
