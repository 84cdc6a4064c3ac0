"""arq task functions. Thin: the work is in `relight` (JobRunner, WebhookSender, sweeps)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from arq import Retry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.config import Settings
from relight.jobs.execution import JobRunner
from relight.jobs.queue import enqueue_delivery
from relight.webhooks.delivery import WebhookSender
from relight.webhooks.service import due_deliveries

logger = logging.getLogger(__name__)


async def run_job(ctx: dict[str, Any], job_id: str) -> str:
    """Run one relight job; safe to call more than once for the same id."""
    runner: JobRunner = ctx["runner"]
    outcome = await runner.run(uuid.UUID(job_id))
    if outcome.retry_in_s is not None:
        raise Retry(defer=outcome.retry_in_s)
    return outcome.status.value if outcome.status is not None else "skipped"


async def deliver_webhook(ctx: dict[str, Any], delivery_id: str) -> str:
    """Make one attempt of a webhook delivery; queue the next one if it failed."""
    sender: WebhookSender = ctx["webhooks"]
    settings: Settings = ctx["settings"]
    delivery = uuid.UUID(delivery_id)
    scheduled = await sender.deliver(delivery)
    if scheduled is None:
        return "done"
    attempts, delay = scheduled
    await enqueue_delivery(ctx["redis"], settings.queue_name, delivery, attempts + 1, delay)
    return f"retry in {delay:.1f} s"


async def sweep(ctx: dict[str, Any]) -> int:
    """Queue what Redis may have lost: webhook deliveries that are due (rows are the truth)."""
    sessionmaker: async_sessionmaker[AsyncSession] = ctx["sessionmaker"]
    settings: Settings = ctx["settings"]
    async with sessionmaker() as session:
        due = await due_deliveries(session)
    for delivery_id, attempts in due:
        # The attempt number is in the arq job id, so a delivery already queued is not doubled.
        await enqueue_delivery(ctx["redis"], settings.queue_name, delivery_id, attempts + 1)
    if due:
        logger.info("sweep queued %d due webhook deliveries", len(due))
    return len(due)
