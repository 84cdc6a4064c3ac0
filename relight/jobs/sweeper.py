"""Recovering jobs that Redis or a dead worker lost. Postgres is the truth; the queue is a hint.

- A job `queued` in the database for longer than a grace period may be missing from Redis (a
  crash between commit and enqueue, a Redis restart or FLUSHALL): queue it again; arq refuses
  the copy if the original is still there, so this never runs a job twice at once.
- Stored images of requests finished longer ago than the retention period are deleted.
- A queued or running job whose deadline (`Cancel-After`) passed is canceled as
  `deadline_exceeded` and refunded: the fallback of the workers' deadline watchers
  (`relight.jobs.deadline_watch`), should every one of them be failing.
- A job `running` whose lease expired belongs to a worker that died (a live worker renews its
  lease while the job runs): take it back. It goes back to the queue if attempts remain, else
  it ends `failed` with a refund and its webhook.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from relight.core.logs import job_context
from relight.core.storage import Storage
from relight.core.storage.urls import UrlBuilder
from relight.jobs import lifecycle, repository
from relight.jobs.deadline_watch import expire_passed
from relight.jobs.lifecycle import Moved

logger = logging.getLogger(__name__)


@dataclass
class Reclaimed:
    """The jobs taken back, as `lifecycle.expire_lease` moved them (to `announce`)."""

    moves: list[Moved] = field(default_factory=list)

    @property
    def requeued(self) -> list[uuid.UUID]:
        return [moved.job.id for moved in self.moves if not moved.finished]

    @property
    def failed(self) -> list[uuid.UUID]:
        return [moved.job.id for moved in self.moves if moved.finished]


async def queued_before(
    session: AsyncSession, grace_s: float, limit: int = 500
) -> dict[uuid.UUID, str | None]:
    """Jobs queued for longer than `grace_s` (oldest first): id → request id of the submit."""
    cutoff = datetime.now(UTC) - timedelta(seconds=grace_s)
    return await repository.queued_before(session, cutoff, limit)


@dataclass(frozen=True)
class Owner:
    """A job's tenant and the tenant's weight, for its place in the fair turns, and the job's
    lane (kept when it is queued again)."""

    tenant_id: uuid.UUID
    weight: int
    priority: str = "normal"


async def owners_of(session: AsyncSession, job_ids: set[uuid.UUID]) -> dict[uuid.UUID, Owner]:
    """job id → its tenant and weight, so that a job queued again keeps taking its tenant's
    turns (in its own lane), and the weight's copy in Redis is written again (it heals after
    a flush)."""
    if not job_ids:
        return {}
    rows = await repository.owners_of(session, job_ids)
    return {
        job_id: Owner(tenant_id, weight, priority) for job_id, tenant_id, weight, priority in rows
    }


async def expire_deadlines(
    session: AsyncSession, urls: UrlBuilder, limit: int = 200
) -> list[Moved]:
    """Cancel the unfinished jobs whose deadline passed (`lifecycle.expire_deadline`); the
    caller commits, then announces the moves."""
    return await expire_passed(session, urls, limit)


async def reclaim_expired(
    session: AsyncSession, max_attempts: int, urls: UrlBuilder, limit: int = 200
) -> Reclaimed:
    """Take back running jobs whose lease expired; the caller commits, then announces the
    moves (`lifecycle.announce`) and queues the requeued jobs again."""
    now = datetime.now(UTC)
    expired = await repository.expired_leases(session, now, limit)
    result = Reclaimed()
    for job in expired:
        moved = await lifecycle.expire_lease(session, job, max_attempts, urls)
        if moved is None:
            continue
        with job_context(job.id, job.http_request_id):
            logger.warning(
                "job %s: lease of attempt %d expired; %s",
                job.id,
                job.attempts,
                "failing it" if moved.finished else "back to the queue",
            )
        result.moves.append(moved)
    return result


async def expire_stored_images(
    session: AsyncSession, storage: Storage, retention_s: int, limit: int = 500
) -> int:
    """Delete the stored inputs and outputs of requests finished more than `retention_s` ago.

    The rows stay (the record keeps its history; an expired output answers 410). Files go
    first, then the rows are marked: a crash in between only repeats a harmless delete.
    """
    if retention_s <= 0:
        return 0
    cutoff = datetime.now(UTC) - timedelta(seconds=retention_s)
    outputs = await repository.stored_outputs_finished_before(session, cutoff, limit)
    inputs = await repository.stored_inputs_finished_before(session, cutoff, limit)
    backgrounds = await repository.stored_backgrounds_finished_before(session, cutoff, limit)
    now = datetime.now(UTC)
    for output in outputs:
        await storage.delete(output.storage_key)
        output.deleted_at = now
    for job in inputs:
        assert job.input_storage_key is not None
        await storage.delete(job.input_storage_key)
        job.input_storage_key = None
    for job in backgrounds:
        assert job.background_storage_key is not None
        await storage.delete(job.background_storage_key)
        job.background_storage_key = None
    await repository.flush(session)
    return len(outputs) + len(inputs) + len(backgrounds)
