"""Job notifications over Redis pub/sub, so callers wait and follow jobs without polling.

Two channels per queue. After the commit that ends a job, its id is published on `finished`;
after a commit that moves a job that is not finished (claimed, handed back, retried, taken back,
progress written), `<id> status` or `<id> progress` on `changed`: both by
`relight.jobs.lifecycle.announce`, whoever made the move (the worker, the sweeper, a cancel).
Each API process keeps one subscription to both and wakes the requests waiting on a job
(`watch`: its end only) or following it (`follow`: every change, and while it is queued every
status change of any job, since that may move its queue position). Whoever is woken re-reads
the database, so a lost message costs at most a re-check's delay, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

Change = Literal["status", "progress"]


def finished_channel(queue_name: str) -> str:
    return f"{queue_name}:finished"


def changed_channel(queue_name: str) -> str:
    return f"{queue_name}:changed"


async def publish_finished(redis: Redis, queue_name: str, job_id: uuid.UUID) -> None:
    """Announce that a job reached a terminal state; losing the message is tolerated."""
    try:
        await redis.publish(finished_channel(queue_name), str(job_id))
    except RedisError:
        logger.warning("could not publish the end of job %s", job_id, exc_info=True)


async def publish_changed(redis: Redis, queue_name: str, job_id: uuid.UUID, change: Change) -> None:
    """Announce a committed change of a job that has not finished; losing it is tolerated."""
    try:
        await redis.publish(changed_channel(queue_name), f"{job_id} {change}")
    except RedisError:
        logger.warning("could not publish a change of job %s", job_id, exc_info=True)


class JobFollower:
    """What a follower waits on. `own` tells whether its job changed since `clear()`, as
    opposed to the queue around it (which wakes it only while `queued` is set)."""

    def __init__(self) -> None:
        self.woken = asyncio.Event()
        self.own = False
        self.queued = False

    def wake(self, *, own: bool) -> None:
        self.own = self.own or own
        self.woken.set()

    def clear(self) -> None:
        self.own = False
        self.woken.clear()


class JobWaiter:
    """One pub/sub subscription per process, fanned out to the waiting requests."""

    def __init__(self, redis: Redis, queue_name: str) -> None:
        self._redis = redis
        self._finished = finished_channel(queue_name)
        self._changed = changed_channel(queue_name)
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._followers: defaultdict[str, set[JobFollower]] = defaultdict(set)
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
                    await pubsub.subscribe(self._finished, self._changed)
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._dispatch(_text(message["channel"]), _text(message["data"]))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                self._subscribed.clear()
                logger.warning("job notifications subscription lost; reconnecting", exc_info=True)
                # Wake everyone so they re-check the database instead of missing an event.
                for events in self._waiters.values():
                    for event in events:
                        event.set()
                for follower in self._all_followers():
                    follower.wake(own=True)
                await asyncio.sleep(1)

    def _dispatch(self, channel: str, data: str) -> None:
        job_id, _, change = data.partition(" ")
        if channel == self._finished:
            for event in self._waiters.get(job_id, ()):
                event.set()
        for follower in self._followers.get(job_id, ()):
            follower.wake(own=True)
        if change != "progress":
            # A job leaving the queue (or coming back to it) may move every queued job's place.
            for follower in self._all_followers():
                if follower.queued:
                    follower.wake(own=False)

    def _all_followers(self) -> Iterable[JobFollower]:
        return [follower for followers in self._followers.values() for follower in followers]

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

    @contextlib.asynccontextmanager
    async def follow(self, job_id: uuid.UUID) -> AsyncIterator[JobFollower]:
        """Every change of the job (and, while `queued`, of the queue), registered before the
        caller's first read so that no change slips between."""
        key = str(job_id)
        follower = JobFollower()
        self._followers[key].add(follower)
        try:
            yield follower
        finally:
            self._followers[key].discard(follower)
            if not self._followers[key]:
                del self._followers[key]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
