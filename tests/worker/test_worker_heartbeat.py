"""Each worker says it is alive (issue 27): a heartbeat in Redis from its first poll, naming
its host and process, gone at a clean shutdown; one that stops beating reads as stale."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.core.config import Settings
from relight.jobs.worker_heartbeat import STALE_AFTER_S, WorkerBeat, publish_beat, read_beats
from relight.ops.workers import worker_statuses
from tests.waiting import wait_until
from worker.settings import build_worker


async def test_a_running_worker_beats_and_a_clean_shutdown_removes_its_beat(
    settings: Settings, engine: AsyncEngine, redis: Redis, clean_state: None
) -> None:
    workers = [build_worker(settings, handle_signals=False) for _ in range(2)]
    tasks = [asyncio.create_task(worker.async_run()) for worker in workers]
    try:

        async def both_beat() -> bool:
            return len(await read_beats(redis, settings.queue_name)) == 2

        await wait_until(both_beat, what="both workers' heartbeats")
        beats = {beat.id: beat for beat in await read_beats(redis, settings.queue_name)}
        assert set(beats) == {worker.worker_id for worker in workers}
        for beat in beats.values():
            assert (beat.host, beat.pid) == (socket.gethostname(), os.getpid())
            assert beat.max_tasks == settings.worker_concurrency
        statuses = await worker_statuses(redis, settings.queue_name)
        assert [status.stale for status in statuses] == [False, False]
    finally:
        tasks[0].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[0]
        await workers[0].close()
    # The one shut down is gone at once; the other still beats.
    assert [beat.id for beat in await read_beats(redis, settings.queue_name)] == [
        workers[1].worker_id
    ]
    tasks[1].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await tasks[1]
    await workers[1].close()
    assert await read_beats(redis, settings.queue_name) == []


async def test_a_worker_that_stopped_beating_is_listed_as_stale_after_the_live_ones(
    settings: Settings, redis: Redis, clean_state: None
) -> None:
    now = time.time()
    for name, silent_s in [("quiet", STALE_AFTER_S + 5), ("fresh", 1.0)]:
        await publish_beat(
            redis,
            WorkerBeat(
                id=f"{name}:1:abc", host=name, pid=1, queue=settings.queue_name,
                started_at=now - 900, last_seen=now - silent_s, tasks_running=0,
                max_tasks=4, tasks_done=3,
            ),
        )  # fmt: skip
    statuses = await worker_statuses(redis, settings.queue_name)
    assert [(status.beat.host, status.stale) for status in statuses] == [
        ("fresh", False),
        ("quiet", True),
    ]
