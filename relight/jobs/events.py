"""Job-finished notifications over Redis pub/sub, so synchronous callers wait without polling.

The worker publishes a job's id on one channel after the commit that ends it. Each API process
keeps one subscription and wakes the requests waiting on that id; a waiter always re-reads the
database afterwards, so a lost message costs at most the wait's timeout, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)


def finished_channel(queue_name: str) -> str:
    return f"{queue_name}:finished"


async def publish_finished(redis: Redis, queue_name: str, job_id: uuid.UUID) -> None:
    """Announce that a job reached a terminal state; losing the message is tolerated."""
    try:
        await redis.publish(finished_channel(queue_name), str(job_id))
    except RedisError:
        logger.warning("could not publish the end of job %s", job_id, exc_info=True)


class JobWaiter:
    """One pub/sub subscription per process, fanned out to the waiting requests."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self._redis = redis
        self._channel = finished_channel(queue_name)
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="relight-job-waiter")
        # Best effort: a waiter that starts before the subscription is live still times out
        # into a database re-check, so do not block startup on Redis.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=2)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        data = message["data"]
                        job_id = data.decode() if isinstance(data, bytes) else str(data)
                        for event in self._waiters.get(job_id, ()):
                            event.set()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                self._subscribed.clear()
                logger.warning("job-finished subscription lost; reconnecting", exc_info=True)
                # Wake everyone so they re-check the database instead of missing an event.
                for events in self._waiters.values():
                    for event in events:
                        event.set()
                await asyncio.sleep(1)

    @contextlib.asynccontextmanager
    async def watch(self, job_id: uuid.UUID) -> AsyncIterator[asyncio.Event]:
        """Register interest *before* checking the database, so no finish slips between."""
        key = str(job_id)
        event = asyncio.Event()
        self._waiters[key].add(event)
        try:
            yield event
        finally:
            self._waiters[key].discard(event)
            if not self._waiters[key]:
                del self._waiters[key]
