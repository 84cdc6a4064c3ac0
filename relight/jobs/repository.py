"""Every query on `job` and `job_output`. Tenant-owned reads always filter by tenant.

The queries that change a job's status (`claim`, `transition`) are `relight.jobs.lifecycle`'s to
call: a transition is written there, once, with what it charges, refunds and announces."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relight.core import metrics
from relight.core.errors import RequestNotFound
from relight.core.models import Job, JobOutput, JobStatus, Tenant


async def get_job(session: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    """The tenant's job; another tenant's id is as unknown as a made-up one."""
    job = await session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise RequestNotFound(f"no request {job_id}")
    return job


async def get_job_by_id(session: AsyncSession, job_id: uuid.UUID) -> Job | None:
    return await session.get(Job, job_id, populate_existing=True)


async def http_request_id_of(session: AsyncSession, job_id: uuid.UUID) -> str | None:
    """The X-Request-ID that submitted the job (for its log lines), if any."""
    return await session.scalar(select(Job.http_request_id).where(Job.id == job_id))


async def find_by_idempotency_key(
    session: AsyncSession, tenant_id: uuid.UUID, key: str
) -> Job | None:
    return await session.scalar(
        select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
    )


async def get_outputs(
    session: AsyncSession, job_ids: Sequence[uuid.UUID], *, flush: bool = False
) -> list[JobOutput]:
    """The jobs' outputs by job and index; `flush` first writes the outputs added in the
    caller's transaction, so that they are among them."""
    if flush:
        await session.flush()
    if not job_ids:
        return []
    result = await session.scalars(
        select(JobOutput)
        .where(JobOutput.job_id.in_(job_ids))
        .order_by(JobOutput.job_id, JobOutput.index)
    )
    return list(result.all())


async def get_output(session: AsyncSession, job_id: uuid.UUID, index: int) -> JobOutput | None:
    return await session.scalar(
        select(JobOutput).where(JobOutput.job_id == job_id, JobOutput.index == index)
    )


async def list_jobs(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    limit: int,
    before: uuid.UUID | None,
    status: JobStatus | None,
) -> list[Job]:
    """Newest first; ids are time-ordered (UUIDv7), so the id is the cursor."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if before is not None:
        query = query.where(Job.id < before)
    if status is not None:
        query = query.where(Job.status == status.value)
    return list((await session.scalars(query.order_by(Job.id.desc()).limit(limit))).all())


async def usage_since(
    session: AsyncSession, tenant_id: uuid.UUID, since: datetime
) -> tuple[dict[str, int], int]:
    """Requests by status created since `since`, and the credits they were charged."""
    rows = await session.execute(
        select(Job.status, func.count(), func.coalesce(func.sum(Job.credits_charged), 0))
        .where(Job.tenant_id == tenant_id, Job.created_at >= since)
        .group_by(Job.status)
    )
    counts: dict[str, int] = {}
    charged = 0
    for status, count, credits in rows:
        counts[JobStatus(status).public] = int(count)
        charged += int(credits)
    return counts, charged


async def queue_position(session: AsyncSession, job: Job) -> int:
    """How many queued jobs (of any tenant) were submitted before this one."""
    count = await session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.status == JobStatus.QUEUED.value, Job.created_at < job.created_at)
    )
    return int(count or 0)


async def transition(
    session: AsyncSession,
    job_id: uuid.UUID,
    *,
    from_status: JobStatus,
    values: dict[str, Any],
    attempt: int | None = None,
    past_deadline: bool = False,
    before_deadline: bool = False,
) -> Job | None:
    """Move a job out of `from_status` if (and only if) it is still there (and, with
    `past_deadline`, only if its deadline has passed by the database's clock; with
    `before_deadline`, only if it has none or it has not passed); None otherwise.

    This conditional UPDATE is what makes every step idempotent: of two workers (or a worker
    and a cancel), exactly one sees the row.
    """
    query = update(Job).where(Job.id == job_id, Job.status == from_status.value)
    if attempt is not None:
        query = query.where(Job.attempts == attempt)
    if past_deadline:
        query = query.where(Job.deadline_at.is_not(None), Job.deadline_at <= func.now())
    if before_deadline:
        query = query.where(or_(Job.deadline_at.is_(None), Job.deadline_at > func.now()))
    result = await session.execute(
        query.values(**values).returning(Job).execution_options(populate_existing=True)
    )
    moved = result.scalar_one_or_none()
    if moved is not None and moved.job_status.is_terminal:
        backend = metrics.job_backend(moved.backend_used, moved.backend_calls)
        metrics.count_job_finished(session, moved.status, backend)
    return moved


async def claim(session: AsyncSession, job_id: uuid.UUID, lease_s: float) -> Job | None:
    """`queued → running` with a lease; None when the job is not queued (done, taken, canceled)
    or its deadline passed (it must not start)."""
    now = datetime.now(UTC)
    return await transition(
        session,
        job_id,
        from_status=JobStatus.QUEUED,
        before_deadline=True,
        values={
            "status": JobStatus.RUNNING.value,
            "attempts": Job.attempts + 1,
            "started_at": func.coalesce(Job.started_at, now),
            "lease_expires_at": now + timedelta(seconds=lease_s),
        },
    )


async def renew_lease(
    session: AsyncSession, job_id: uuid.UUID, attempt: int, lease_s: float
) -> bool:
    """Push a running attempt's lease forward; False if the job is no longer this attempt's."""
    result = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value, Job.attempts == attempt)
        .values(lease_expires_at=datetime.now(UTC) + timedelta(seconds=lease_s))
        .returning(Job.id)
    )
    return result.scalar_one_or_none() is not None


async def holds(session: AsyncSession, job_id: uuid.UUID, attempt: int) -> bool:
    """Whether the attempt still holds the job (`running`, not canceled, not taken back)."""
    held = await session.scalar(
        select(Job.id).where(
            Job.id == job_id, Job.status == JobStatus.RUNNING.value, Job.attempts == attempt
        )
    )
    return held is not None


def add_outputs(session: AsyncSession, outputs: Sequence[JobOutput]) -> None:
    session.add_all(outputs)


async def allowed_backends(session: AsyncSession, tenant_id: uuid.UUID) -> list[str]:
    allowed = await session.scalar(select(Tenant.allowed_backends).where(Tenant.id == tenant_id))
    return list(allowed or [])


async def refresh(session: AsyncSession, job: Job) -> None:
    """Read `job`'s row again (what another transaction committed since)."""
    await session.refresh(job)


async def is_autocommit(session: AsyncSession) -> bool:
    """Whether the session's connection commits every statement on its own."""
    connection = (await session.connection()).sync_connection
    assert connection is not None
    return bool(connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT")


# --- what the sweeper looks for ------------------------------------------------------------


async def queued_before(
    session: AsyncSession, cutoff: datetime, limit: int
) -> dict[uuid.UUID, str | None]:
    """Jobs queued since before `cutoff` (oldest first): id → request id of the submit."""
    rows = await session.execute(
        select(Job.id, Job.http_request_id)
        .where(Job.status == JobStatus.QUEUED.value, Job.created_at < cutoff)
        .order_by(Job.created_at)
        .limit(limit)
    )
    return {row.id: row.http_request_id for row in rows}


async def owners_of(
    session: AsyncSession, job_ids: set[uuid.UUID]
) -> list[tuple[uuid.UUID, uuid.UUID, int, str]]:
    """`(job id, tenant id, tenant weight, priority)` of each of these jobs that exists."""
    rows = await session.execute(
        select(Job.id, Job.tenant_id, Tenant.weight, Job.priority)
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where(Job.id.in_(job_ids))
    )
    return [(row.id, row.tenant_id, row.weight, row.priority) for row in rows]


_UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


async def past_deadline(session: AsyncSession, limit: int) -> list[uuid.UUID]:
    """Queued or running jobs whose deadline passed (by the database's clock), oldest
    deadline first, locked (rows another transaction is expiring are skipped)."""
    result = await session.scalars(
        select(Job.id)
        .where(
            Job.deadline_at.is_not(None),
            Job.status.in_(_UNFINISHED),
            Job.deadline_at <= func.now(),
        )
        .order_by(Job.deadline_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(result.all())


async def next_deadline_in_s(session: AsyncSession) -> float | None:
    """Seconds (by the database's clock) until the earliest deadline of a queued or running
    job, 0 or less when one has passed; None when none has a deadline."""
    seconds = await session.scalar(
        select(func.extract("epoch", func.min(Job.deadline_at) - func.now())).where(
            Job.deadline_at.is_not(None), Job.status.in_(_UNFINISHED)
        )
    )
    return None if seconds is None else float(seconds)


async def expired_leases(session: AsyncSession, now: datetime, limit: int) -> list[Job]:
    """Running jobs whose lease ended before `now`, longest expired first, locked (rows another
    sweep holds are skipped)."""
    result = await session.scalars(
        select(Job)
        .where(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now)
        .order_by(Job.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(result.all())


async def stored_outputs_finished_before(
    session: AsyncSession, cutoff: datetime, limit: int
) -> list[JobOutput]:
    """Outputs still stored of jobs finished before `cutoff`."""
    result = await session.scalars(
        select(JobOutput)
        .join(Job, Job.id == JobOutput.job_id)
        .where(JobOutput.deleted_at.is_(None), Job.finished_at < cutoff)
        .limit(limit)
    )
    return list(result.all())


async def stored_inputs_finished_before(
    session: AsyncSession, cutoff: datetime, limit: int
) -> list[Job]:
    """Jobs finished before `cutoff` whose subject is still stored."""
    result = await session.scalars(
        select(Job).where(Job.input_storage_key.is_not(None), Job.finished_at < cutoff).limit(limit)
    )
    return list(result.all())


async def stored_backgrounds_finished_before(
    session: AsyncSession, cutoff: datetime, limit: int
) -> list[Job]:
    """Jobs finished before `cutoff` whose background is still stored."""
    result = await session.scalars(
        select(Job)
        .where(Job.background_storage_key.is_not(None), Job.finished_at < cutoff)
        .limit(limit)
    )
    return list(result.all())


async def flush(session: AsyncSession) -> None:
    """Write the changes made to loaded rows (the sweeper's marks of deleted images)."""
    await session.flush()
