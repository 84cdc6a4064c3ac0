"""Process-wide resources, created in the app's lifespan and shared by every request."""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field

from arq.connections import ArqRedis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api.signin_throttle import SigninThrottle
from api.stream_limits import StreamSlots
from relight.core.config import Settings
from relight.core.ratelimit import RateLimiter
from relight.core.storage import Storage
from relight.jobs.events import JobWaiter
from relight.jobs.queue import enqueue_delivery, enqueue_run
from relight.tenants.auth_cache import AuthCache

logger = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    # Sessions whose statements commit one by one (no BEGIN/COMMIT round trips): for reads
    # that need no transaction, such as looking up an API key.
    autocommit_sessionmaker: async_sessionmaker[AsyncSession]
    redis: ArqRedis
    storage: Storage
    waiter: JobWaiter
    limiter: RateLimiter
    signin_throttle: SigninThrottle
    auth_cache: AuthCache
    # Status streams open in this process, by API key and by tenant.
    stream_slots: StreamSlots = field(default_factory=StreamSlots)

    async def enqueue(
        self,
        job_id: uuid.UUID,
        tenant_id: uuid.UUID,
        weight: int | None = None,
        *,
        priority: str = "normal",
    ) -> None:
        """Hand a committed job to the workers, in its tenant's turns (at its weight) and its
        `priority` lane; arq refuses a second copy of the same id. (A deadline needs nothing
        queued: the workers' deadline watchers read it from the row.)"""
        if self.settings.fault_injection == "exit_before_enqueue":
            logger.critical("fault injection: exiting between commit and enqueue of %s", job_id)
            os._exit(70)
        queue = self.settings.queue_name
        try:
            await enqueue_run(self.redis, queue, job_id, tenant_id, weight, priority)
        except (RedisError, OSError):
            # The job is committed and stays `queued`; the sweeper re-enqueues what Redis lacks.
            logger.exception("could not enqueue job %s", job_id)

    async def enqueue_deliveries(self, delivery_ids: list[uuid.UUID]) -> None:
        """Enqueue committed webhook deliveries (the sweeper covers any that fail to enqueue)."""
        for delivery_id in delivery_ids:
            try:
                await enqueue_delivery(self.redis, self.settings.queue_name, delivery_id, 1)
            except (RedisError, OSError):
                logger.exception("could not queue webhook delivery %s", delivery_id)
