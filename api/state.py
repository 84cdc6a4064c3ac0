"""Process-wide resources, created in the app's lifespan and shared by every request."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from arq.connections import ArqRedis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relight.config import Settings
from relight.jobs.events import JobWaiter
from relight.jobs.queue import RUN_JOB_TASK
from relight.ratelimit import RateLimiter
from relight.storage import Storage

logger = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: ArqRedis
    storage: Storage
    waiter: JobWaiter
    limiter: RateLimiter

    async def enqueue(self, job_id: uuid.UUID) -> None:
        """Hand a committed job to the workers; arq refuses a second copy of the same id."""
        try:
            await self.redis.enqueue_job(
                RUN_JOB_TASK, str(job_id), _job_id=str(job_id), _queue_name=self.settings.queue_name
            )
        except (RedisError, OSError):
            # The job is committed and stays `queued`; the sweeper re-enqueues what Redis lacks.
            logger.exception("could not enqueue job %s", job_id)
