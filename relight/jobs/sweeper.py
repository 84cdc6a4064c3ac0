"""Recovering jobs that Redis or a dead worker lost. Postgres is the truth; the queue is a hint.

- A job `queued` in the database for longer than a grace period may be missing from Redis (a
  crash between commit and enqueue, a Redis restart or FLUSHALL): queue it again; arq refuses
  the copy if the original is still there, so this never runs a job twice at once.
- A job `running` whose lease expired belongs to a worker that died (a live worker renews its
  lease while the job runs): take it back. It goes back to the queue if attempts remain, else
  it ends `failed` with a refund and its webhook.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from relight.jobs import repository
from relight.jobs.service import fail_running_job
from relight.models import Job, JobStatus


@dataclass
class Reclaimed:
    requeued: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)
    deliveries: list[uuid.UUID] = field(default_factory=list)


async def queued_before(session: AsyncSession, grace_s: float, limit: int = 500) -> list[uuid.UUID]:
    """Ids of jobs queued for longer than `grace_s` (oldest first)."""
    cutoff = datetime.now(UTC) - timedelta(seconds=grace_s)
    rows = await session.scalars(
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED.value, Job.created_at < cutoff)
        .order_by(Job.created_at)
        .limit(limit)
    )
    return list(rows.all())


async def reclaim_expired(session: AsyncSession, max_attempts: int, limit: int = 200) -> Reclaimed:
    """Take back running jobs whose lease expired; the caller commits, then enqueues."""
    now = datetime.now(UTC)
    expired = (
        await session.scalars(
            select(Job)
            .where(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now)
            .order_by(Job.lease_expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    result = Reclaimed()
    for job in expired:
        message = f"the worker running attempt {job.attempts} stopped answering (lease expired)"
        if job.attempts < max_attempts:
            moved = await repository.transition(
                session,
                job.id,
                from_status=JobStatus.RUNNING,
                attempt=job.attempts,
                values={
                    "status": JobStatus.QUEUED.value,
                    "lease_expires_at": None,
                    "error_code": "worker_lost",
                    "error_message": message,
                },
            )
            if moved is not None:
                result.requeued.append(job.id)
            continue
        failed = await fail_running_job(session, job, "worker_lost", message)
        if failed is None:
            continue
        result.failed.append(job.id)
        if failed.delivery is not None:
            result.deliveries.append(failed.delivery)
    return result
