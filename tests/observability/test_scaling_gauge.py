"""The workers' scaling signal counts relight work only (issue 27): `relight_runnable_jobs` is
the relight jobs waiting to start or running, webhook delivery retries have a gauge of their
own (`relight_webhook_deliveries_pending`), and `relight_queue_depth` still counts every entry
of arq's queue (it read 20+ in the dead-webhook scenario below, enough to keep 3 replicas up
for a day of retries with nothing to render).
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from redis.asyncio import Redis

from relight.core.config import Settings
from relight.jobs.arq_format import claim_job
from relight.jobs.queue import RUN_JOB_TASK, enqueue
from tests.conftest import TenantKey
from tests.fakes.webhook_receiver import Reply, WebhookReceiver
from tests.helpers import fast_body, get_record, submit
from tests.observability.conftest import Scrape, free_port, scrape
from tests.waiting import wait_until

REQUESTS = 20


@pytest.fixture
def metrics_settings(settings: Settings) -> Settings:
    """A worker that serves metrics and waits an hour before a webhook's first retry, so each
    failed delivery stays in arq's queue as a deferred retry while the test looks."""
    return settings.model_copy(
        update={
            "worker_metrics_port": free_port(),
            "worker_metrics_host": "127.0.0.1",
            "webhook_retry_schedule": "3600,3600",
        }
    )


async def test_dead_webhooks_leave_nothing_to_scale_on(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    metrics_worker: str,
    receiver: WebhookReceiver,
) -> None:
    receiver.script("/dead", [Reply(status=500)] * (REQUESTS * 2))
    request_ids = [
        await submit(client, tenant, fast_body(webhook_url=receiver.url("/dead")))
        for _ in range(REQUESTS)
    ]

    async def all_completed() -> bool:
        records = [await get_record(client, tenant, rid) for rid in request_ids]
        return all(record["status"] == "COMPLETED" for record in records)

    await wait_until(all_completed, what=f"{REQUESTS} requests rendered")
    await receiver.wait_for("/dead", REQUESTS, timeout_s=30)
    latest: list[Scrape] = []

    async def retries_deferred() -> bool:
        latest[:] = [await scrape(client)]
        return latest[0].value("relight_webhook_deliveries_pending") == REQUESTS

    await wait_until(retries_deferred, what="every failed delivery deferred for a retry")
    scraped = latest[0]

    assert scraped.total("relight_runnable_jobs") == 0
    assert scraped.value("relight_webhook_deliveries_pending") == REQUESTS
    # The old gauge counts the deferred retries (and the sweep cron): what KEDA scaled on.
    assert scraped.value("relight_queue_depth") >= REQUESTS


async def test_a_queued_job_counts_one(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    # No worker runs: the job waits in arq's queue (this run's queue, emptied per test).
    await submit(client, tenant, fast_body())
    scraped = await scrape(client)

    assert scraped.total("relight_runnable_jobs") == 1
    assert scraped.value("relight_webhook_deliveries_pending") == 0
    assert scraped.value("relight_queue_depth") == 1


async def test_a_running_job_counts_and_a_deferred_retry_does_not(
    client: httpx.AsyncClient, tenant: TenantKey, redis: Redis, settings: Settings
) -> None:
    request_id = await submit(client, tenant, fast_body())
    # Claimed as a worker claims it: marked in progress, its entry kept until it ends.
    assert await claim_job(redis, settings.queue_name, request_id, 60) is not None
    # A run_job retry deferred for later: not runnable yet.
    await enqueue(redis, settings.queue_name, RUN_JOB_TASK, str(uuid.uuid4()), defer_s=3600)
    scraped = await scrape(client)

    assert scraped.total("relight_runnable_jobs") == 1
    assert scraped.value("relight_queue_depth") == 2
