"""The wake-up signal: a worker with a long poll delay starts new jobs at once, not at its
next poll; deferred jobs start when due. Real worker, real API, real Redis and Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.core.config import Settings
from tests.conftest import TenantKey
from tests.helpers import fast_body, get_record, get_status, submit
from worker.settings import build_worker

# A lost wake-up would cost a job up to this; the tests' bounds stay far below it, so a slow
# machine cannot pass for a missed wake-up nor a missed one for a fast start.
LONG_POLL_DELAY_S = 60.0
# What a woken worker may take to start a job here, however loaded the machine.
STARTS_WITHIN_S = 20.0


@contextlib.asynccontextmanager
async def worker_with_long_poll(settings: Settings) -> AsyncIterator[None]:
    # The sweeper runs once a minute, so its cron ticks do not wake the worker either.
    quiet = settings.model_copy(update={"webhook_sweep_interval_s": 60})
    worker = build_worker(quiet, poll_delay=LONG_POLL_DELAY_S, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()


async def seconds_until_started(
    client: httpx.AsyncClient, tenant: TenantKey, request_id: str, limit_s: float
) -> float:
    """How long until the request leaves QUEUED (polling the API), at most `limit_s`."""
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        status = await get_status(client, tenant, request_id)
        if status["status"] != "QUEUED":
            return time.monotonic() - began
        await asyncio.sleep(0.02)
    return limit_s


async def test_new_jobs_start_long_before_the_poll_delay(
    client: httpx.AsyncClient, tenant: TenantKey, settings: Settings, engine: AsyncEngine
) -> None:
    async with worker_with_long_poll(settings):
        # Let the worker start, run its first poll and settle into waiting.
        await asyncio.sleep(1.0)
        for _ in range(3):
            request_id = await submit(client, tenant, fast_body())
            started_after = await seconds_until_started(
                client, tenant, request_id, LONG_POLL_DELAY_S
            )
            assert started_after < STARTS_WITHIN_S
            record = await get_record(client, tenant, request_id)
            # The worker's own measure: from the commit of the submit to the claim.
            if record["timings"]:
                assert record["timings"]["queue_wait_ms"] < STARTS_WITHIN_S * 1000
            await asyncio.sleep(0.3)  # idle again, deep inside its long wait


async def test_a_deferred_job_starts_when_due_not_at_the_next_poll(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    settings: Settings,
    redis: ArqRedis,
    engine: AsyncEngine,
) -> None:
    request_id = await submit(client, tenant, fast_body())
    # As a retry would be: due in 0.6 s (arq's queue score is the due time in ms).
    due_ms = time.time() * 1000 + 600
    await redis.zadd(settings.queue_name, {request_id: due_ms})
    async with worker_with_long_poll(settings):
        started_after = await seconds_until_started(client, tenant, request_id, LONG_POLL_DELAY_S)
    # Not before it fell due (one clock: this machine's), and not at the next poll either.
    started_at = datetime.fromisoformat(
        (await get_record(client, tenant, request_id))["started_at"]
    )
    assert started_at.timestamp() * 1000 >= due_ms
    assert started_after < STARTS_WITHIN_S


async def test_a_full_worker_takes_the_next_job_when_a_slot_frees(
    client: httpx.AsyncClient, tenant: TenantKey, settings: Settings, engine: AsyncEngine
) -> None:
    one_slot = settings.model_copy(update={"worker_concurrency": 1, "webhook_sweep_interval_s": 60})
    worker = build_worker(one_slot, poll_delay=LONG_POLL_DELAY_S, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        await asyncio.sleep(1.0)
        first, second = [await submit(client, tenant, fast_body()) for _ in range(2)]
        began = time.monotonic()
        while time.monotonic() - began < LONG_POLL_DELAY_S:
            statuses = [
                (await get_status(client, tenant, rid))["status"] for rid in (first, second)
            ]
            if statuses == ["COMPLETED", "COMPLETED"]:
                break
            await asyncio.sleep(0.02)
        assert statuses == ["COMPLETED", "COMPLETED"]
        assert time.monotonic() - began < STARTS_WITHIN_S
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
