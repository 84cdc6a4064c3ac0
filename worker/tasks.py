"""arq task functions. Thin: the work is in `relight` (JobRunner, WebhookSender, sweeps)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from arq import Retry
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.core.logs import job_context
from relight.core.storage.urls import UrlBuilder
from relight.core.unit_of_work import unit_of_work
from relight.jobs import sweeper
from relight.jobs.execution import JobRunner
from relight.jobs.lifecycle import announce
from relight.jobs.queue import delivery_job_id, enqueue_delivery, enqueue_run
from relight.webhooks.delivery import WebhookSender
from relight.webhooks.service import due_deliveries

logger = logging.getLogger(__name__)


async def run_job(ctx: dict[str, Any], job_id: str) -> str:
    """Run one relight job; safe to call more than once for the same id."""
    runner: JobRunner = ctx["runner"]
    with job_context(job_id):
        outcome = await runner.run(uuid.UUID(job_id))
    if outcome.retry_in_s is not None:
        raise Retry(defer=outcome.retry_in_s)
    return outcome.status.value if outcome.status is not None else "skipped"


async def deliver_webhook(ctx: dict[str, Any], delivery_id: str) -> str:
    """Make one attempt of a webhook delivery; enqueue the next one if it failed."""
    sender: WebhookSender = ctx["webhooks"]
    settings: Settings = ctx["settings"]
    delivery = uuid.UUID(delivery_id)
    scheduled = await sender.deliver(delivery)
    if scheduled is None:
        return "done"
    attempts, delay = scheduled
    await enqueue_delivery(ctx["redis"], settings.queue_name, delivery, attempts + 1, delay)
    return f"retry in {delay:.1f} s"


async def _enqueue_again(
    redis: ArqRedis, queue: str, arq_job_id: str, enqueue: Callable[[], Awaitable[bool]]
) -> bool:
    """Enqueue; if arq refuses because it keeps a job key that is no longer in the queue
    (Redis lost the queue entry but not the key), that key is stale: drop it and enqueue."""
    if await enqueue():
        return True
    if await redis.zscore(queue, arq_job_id) is None:
        await redis.delete(job_key_prefix + arq_job_id)
        return await enqueue()
    return False


async def sweep(ctx: dict[str, Any]) -> dict[str, int]:
    """Recover what Redis or a dead worker lost (rows are the truth): jobs `queued` in the
    database but missing from arq's queue, running jobs whose lease expired, webhook deliveries
    that are due. One worker
    runs each sweep (arq cron jobs are unique per tick)."""
    sessionmaker: async_sessionmaker[AsyncSession] = ctx["sessionmaker"]
    settings: Settings = ctx["settings"]
    redis = ctx["redis"]
    queue = settings.queue_name
    async with unit_of_work(sessionmaker) as uow:
        reclaimed = await sweeper.reclaim_expired(
            uow.session, settings.job_max_attempts, UrlBuilder.background(settings)
        )
        # Wakes the followers of the jobs taken back (and the waiters of those that failed),
        # then queues their webhooks.
        uow.after_commit(partial(announce, redis, queue, *reclaimed.moves))
    async with unit_of_work(sessionmaker) as uow:
        past_deadline = await sweeper.expire_deadlines(uow.session, UrlBuilder.background(settings))
        uow.after_commit(partial(announce, redis, queue, *past_deadline))
    async with unit_of_work(sessionmaker) as uow:
        expired = await sweeper.expire_stored_images(
            uow.session, ctx["storage"], settings.retention_s
        )
    async with sessionmaker() as session:
        queued_too_long = await sweeper.queued_before(session, settings.requeue_grace_s)
        due = await due_deliveries(session)
        owners = await sweeper.owners_of(session, {*queued_too_long, *reclaimed.requeued})
    for job_id in reclaimed.requeued:
        # The dead worker's in-progress marker would keep arq from running the job again until
        # it expires (job timeout + 40 s). Only the current attempt can finish the job, so
        # dropping the marker is safe even if the old worker is somehow still alive.
        await redis.delete(in_progress_key_prefix + str(job_id))

    async def run_again(job_id: uuid.UUID) -> bool:
        owner = owners.get(job_id)
        if owner is None:  # the row is gone since
            return await enqueue_run(redis, queue, job_id)
        return await enqueue_run(
            redis, queue, job_id, owner.tenant_id, owner.weight, owner.priority
        )

    async def send_again(delivery_id: uuid.UUID, attempt: int) -> bool:
        return await enqueue_delivery(redis, queue, delivery_id, attempt)

    # arq refuses a job id it still holds, so only what Redis really lost is enqueued again.
    enqueued_again = 0
    for job_id in {*queued_too_long, *reclaimed.requeued}:
        if await _enqueue_again(redis, queue, str(job_id), partial(run_again, job_id)):
            enqueued_again += 1
            if job_id in queued_too_long:
                with job_context(job_id, queued_too_long[job_id]):
                    logger.warning("job %s was missing from the queue; enqueued again", job_id)
    for delivery_id, attempts in due:
        # The attempt number is in the arq job id, so a delivery already enqueued is not doubled.
        arq_job_id = delivery_job_id(delivery_id, attempts + 1)
        await _enqueue_again(
            redis, queue, arq_job_id, partial(send_again, delivery_id, attempts + 1)
        )
    counts = {
        # The key says `requeued` (logs and dashboards read it): jobs enqueued again in arq.
        "requeued": enqueued_again,
        "leases_expired": len(reclaimed.requeued) + len(reclaimed.failed),
        "failed": len(reclaimed.failed),
        "deadlines_passed": len(past_deadline),
        "webhooks_due": len(due),
        "images_expired": expired,
    }
    if any(counts.values()):
        logger.info("sweep: %s", counts)
    return counts
