"""Redis behind Sentinel (`RELIGHT_REDIS_URL=redis+sentinel://…`): the api and the worker reach
the primary the sentinel names; when the primary dies under a stream of submits, the sentinel
promotes the replica, every accepted job still ends exactly once, and the books are exact (what
the dead primary never passed on, the sweeper queues again)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from relight.core.config import Settings
from relight.core.redis_url import SentinelTarget, open_redis, parse_sentinel_url
from tests.conftest import MakeTenant, TenantKey
from tests.helpers import fast_body
from tests.production.conftest import (
    Books,
    RedisSentinelSet,
    api_client,
    assert_completed_once,
    wait_until,
)
from worker.settings import build_worker
from worker.tasks import sweep

logger = logging.getLogger(__name__)

# --- the URL ------------------------------------------------------------------------------------


def test_a_sentinel_url_names_its_sentinels_service_and_database() -> None:
    target = parse_sentinel_url(
        "redis+sentinel://:s3cret@sentinel-a:26380,sentinel-b,[::1]:26381/relight/2"
        "?sentinel_password=watch"
    )
    assert target == SentinelTarget(
        sentinels=(("sentinel-a", 26380), ("sentinel-b", 26379), ("::1", 26381)),
        service_name="relight",
        db=2,
        username=None,
        password="s3cret",
        sentinel_password="watch",
    )
    assert parse_sentinel_url("redis+sentinel://user:pw@h:1/svc") == SentinelTarget(
        sentinels=(("h", 1),), service_name="svc", username="user", password="pw"
    )
    assert parse_sentinel_url("redis://127.0.0.1:6379/0") is None


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel:///relight/0",  # no sentinel
        "redis+sentinel://h:26379",  # no service
        "redis+sentinel://h:26379/relight/zero",
        "redis+sentinel://h:port/relight",
        "redis+sentinel://h/relight/0/extra",
        "redis+sentinel://h/relight?master=x",
    ],
)
def test_a_malformed_sentinel_url_is_refused_at_start(url: str) -> None:
    with pytest.raises(ValueError, match=r"sentinel|database"):
        Settings(redis_url=url)


def test_a_redis_url_of_another_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="redis\\+sentinel"):
        Settings(redis_url="http://127.0.0.1:6379")
    assert Settings(redis_url="rediss://cache:6380/1").redis_url == "rediss://cache:6380/1"


# --- through a real sentinel --------------------------------------------------------------------


@pytest.fixture
def sentinel_settings(settings: Settings, redis_sentinel: RedisSentinelSet) -> Settings:
    return settings.model_copy(
        update={
            "redis_url": redis_sentinel.url,
            # A job queued this long without running is queued again by the sweep.
            "requeue_grace_s": 1.0,
        }
    )


async def test_open_redis_reaches_the_primary_the_sentinel_names(
    redis_sentinel: RedisSentinelSet,
) -> None:
    client = open_redis(redis_sentinel.url)
    try:
        await client.set("where", "primary")
        info = await client.info("server")
        assert info["tcp_port"] == redis_sentinel.primary_port
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_submits_and_a_worker_through_the_sentinel(
    sentinel_settings: Settings,
    redis_sentinel: RedisSentinelSet,
    make_tenant: MakeTenant,
    books: Books,
) -> None:
    tenant = await make_tenant(credits=10_000)
    async with api_client(sentinel_settings) as client:
        ids = [await submit_ok(client, tenant, seed=n) for n in range(6)]
    primary = Redis(port=redis_sentinel.primary_port)
    try:
        # The jobs were queued on the primary the sentinel named.
        assert await primary.zcard(sentinel_settings.queue_name) == 6
    finally:
        await primary.aclose()

    worker = build_worker(sentinel_settings, burst=True, poll_delay=0, handle_signals=False)
    try:
        await asyncio.wait_for(worker.async_run(), timeout=120)
    finally:
        await worker.close()

    jobs = await books.wait_finished(ids, timeout_s=60)
    assert_completed_once(jobs)
    balance, ledger = await books.balance_and_ledger(tenant.tenant_id)
    assert balance == ledger == 10_000 - sum(job.credits_charged for job in jobs)


@pytest.mark.slow
async def test_the_primary_dies_under_load_and_every_accepted_job_ends_once(
    sentinel_settings: Settings,
    redis_sentinel: RedisSentinelSet,
    make_tenant: MakeTenant,
    books: Books,
) -> None:
    tenant = await make_tenant(credits=100_000)
    await books.lift_limits(tenant.tenant_id)
    answers: Counter[int] = Counter()
    accepted: list[str] = []
    async with (
        api_client(sentinel_settings) as client,
        running_worker(sentinel_settings) as worker_ctx,
    ):
        stop = asyncio.Event()
        stream = asyncio.create_task(submit_stream(client, tenant, answers, accepted, stop))
        try:
            await wait_until(lambda: _at_least(accepted, 10), 60, "10 submits accepted")
            redis_sentinel.kill_primary()
            killed_at = len(accepted)
            await redis_sentinel.wait_failover()
            failed_over_at = len(accepted)
            await wait_until(
                lambda: _at_least(accepted, failed_over_at + 10),
                60,
                "10 submits accepted after the failover",
            )
        finally:
            stop.set()
            await asyncio.wait_for(stream, timeout=120)

        # The cron's sweep, run here at its pace: it queues again what the new primary lacks.
        async def all_finished() -> bool:
            await sweep(worker_ctx)
            jobs = await books.jobs(accepted)
            return all(job.status in ("succeeded", "failed", "canceled") for job in jobs)

        await wait_until(all_finished, 120, f"{len(accepted)} jobs to finish", every_s=1.0)

    assert answers[500] == 0, answers
    assert set(answers) <= {202, 503}, answers
    jobs = await books.jobs(accepted)
    assert len(jobs) == len(accepted) == len(set(accepted))
    # No job exists that its submit did not hear accepted.
    assert await books.job_count(tenant.tenant_id) == len(accepted)
    assert_completed_once(jobs)
    balance, ledger = await books.balance_and_ledger(tenant.tenant_id)
    assert balance == ledger == 100_000 - sum(job.credits_charged for job in jobs)
    logger.warning(
        "failover: %d accepted (%d before the kill, %d during the failover), answers %s",
        len(accepted),
        killed_at,
        failed_over_at - killed_at,
        dict(answers),
    )


async def _at_least(accepted: list[str], count: int) -> bool:
    return len(accepted) >= count


async def submit_ok(client: httpx.AsyncClient, tenant: TenantKey, **overrides: Any) -> str:
    response = await client.post(
        "/v2/ic-light", headers=tenant.headers, json=fast_body(**overrides)
    )
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id


async def submit_stream(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    answers: Counter[int],
    accepted: list[str],
    stop: asyncio.Event,
) -> None:
    """Submits, four at a time, until `stop` is set (each answer awaited: a submit cut off
    could commit a job nobody hears of); counts the answers, keeps the accepted ids."""

    async def one() -> None:
        response = await client.post(
            "/v2/ic-light", headers=tenant.headers, json=fast_body(seed=uuid.uuid4().int % 10**6)
        )
        answers[response.status_code] += 1
        if response.status_code == 202:
            accepted.append(response.json()["request_id"])

    while not stop.is_set():
        await asyncio.gather(*(one() for _ in range(4)))
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """A worker polling in the background (no cron: the test sweeps); its context once up."""
    worker = build_worker(settings, handle_signals=False, cron_jobs=[])
    task = asyncio.create_task(worker.async_run())
    try:
        started = time.monotonic()
        while "sessionmaker" not in worker.ctx:
            assert not task.done(), task
            assert time.monotonic() - started < 60, "the worker never started"
            await asyncio.sleep(0.05)
        yield worker.ctx
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
