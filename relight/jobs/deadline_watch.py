"""The deadline watcher: each worker process fires the deadlines (`Cancel-After`) that fall due,
without taking one of its job slots.

A deadline must fire at its instant even while every slot renders, so it cannot wait for an arq
job. The watcher is a loop beside the worker's jobs: it sleeps until the earliest deadline of an
unfinished job (by the database's clock), at most `max_sleep_s` so that a new, sooner deadline
is noticed, then cancels every job whose deadline passed through
`relight.jobs.lifecycle.expire_deadline` (queued or running → canceled, `deadline_exceeded`,
refunded once). Several workers race harmlessly: the rows one is expiring are skipped by the
others, and the guarded update moves a job once. After the commit it announces the moves (a
sync waiter and the runner of a running job wake) and sends their webhooks itself, through
`send`, again without waiting for a slot; a send that fails schedules its retries as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.core.logs import job_context
from relight.core.storage.urls import UrlBuilder
from relight.core.unit_of_work import unit_of_work
from relight.jobs import lifecycle, repository
from relight.jobs.lifecycle import Moved

logger = logging.getLogger(__name__)

# How long the watcher sleeps at most: how late it can notice a deadline sooner than any it knew.
MAX_SLEEP_S = 1.0
# The least it sleeps, so a clock quirk never makes it spin.
MIN_SLEEP_S = 0.01
BATCH = 200

SendDelivery = Callable[[uuid.UUID], Awaitable[None]]


async def expire_passed(session: AsyncSession, urls: UrlBuilder, limit: int = BATCH) -> list[Moved]:
    """Cancel the unfinished jobs whose deadline passed (`lifecycle.expire_deadline`); the
    caller commits, then announces the moves. Rows another transaction is expiring are skipped."""
    moves: list[Moved] = []
    for job_id in await repository.past_deadline(session, limit):
        moved = await lifecycle.expire_deadline(session, job_id, urls)
        if moved is not None:
            with job_context(job_id, moved.job.http_request_id):
                logger.info("job %s passed its deadline; canceled", job_id)
            moves.append(moved)
    return moves


class DeadlineWatcher:
    """Fires due deadlines for one worker process (`start` with the worker, `stop` at its end)."""

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: Redis,
        queue_name: str,
        urls: UrlBuilder,
        send: SendDelivery,
        max_sleep_s: float = MAX_SLEEP_S,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.redis = redis
        self.queue_name = queue_name
        self.urls = urls
        self.send = send
        self.max_sleep_s = max_sleep_s
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start watching (in the running event loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="relight-deadlines")

    async def stop(self) -> None:
        """Stop watching, and stop the webhook sends in flight (the sweeper sends what is due)."""
        tasks = [task for task in (self._task, *self._sends) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._sends.clear()

    async def _run(self) -> None:
        while True:
            try:
                sleep_s = await self.fire_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("deadline watch failed; trying again", exc_info=True)
                sleep_s = self.max_sleep_s
            await asyncio.sleep(sleep_s)

    async def fire_due(self) -> float:
        """Cancel and announce the jobs whose deadline passed; answer how long to sleep before
        the next look."""
        async with unit_of_work(self.sessionmaker) as uow:
            moves = await expire_passed(uow.session, self.urls)
        if moves:
            # Waiters and runners are woken; the webhooks are sent here, not queued for a slot.
            quiet = [replace(moved, deliveries=()) for moved in moves]
            await lifecycle.announce(self.redis, self.queue_name, *quiet)
            for moved in moves:
                for delivery_id in moved.deliveries:
                    self._send_soon(delivery_id)
            if len(moves) >= BATCH:
                return 0.0
        async with self.sessionmaker() as session:
            due_in_s = await repository.next_deadline_in_s(session)
        if due_in_s is None:
            return self.max_sleep_s
        return min(self.max_sleep_s, max(MIN_SLEEP_S, due_in_s))

    def _send_soon(self, delivery_id: uuid.UUID) -> None:
        # A slow receiver must not hold back the next deadline.
        task = asyncio.create_task(self._send(delivery_id))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, delivery_id: uuid.UUID) -> None:
        try:
            await self.send(delivery_id)
        except Exception:
            # The row is committed: the sweeper sends it.
            logger.warning("could not send webhook delivery %s", delivery_id, exc_info=True)
