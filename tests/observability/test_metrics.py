"""Prometheus metrics (issue 8, must show 3): after real jobs, the api's and the worker's
`/metrics` count them under their backend and status, with the HTTP requests by route
template, the credits moved, the webhook attempts, queue depth and wait, and backend latency.

The api and the worker share this test process, hence one registry: every assertion compares
a scrape after the scenario with one before it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
from redis.asyncio import Redis

from relight.core.config import Settings
from relight.nodes.registry import NodeInfo
from relight.nodes.slots import acquire_least_loaded, release
from tests.conftest import TenantKey
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import cancel, fast_body, get_record, submit
from tests.observability.conftest import Scrape, scrape


async def wait_until_finished(
    client: httpx.AsyncClient, tenant: TenantKey, request_id: str, timeout_s: float = 20.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        record = await get_record(client, tenant, request_id)
        if record["status"] in ("COMPLETED", "FAILED", "CANCELED"):
            return record
        assert time.monotonic() < deadline, f"{request_id} is still {record['status']}"
        await asyncio.sleep(0.05)


def delta(after: Scrape, before: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def requests_delta(after: Scrape, before: Scrape, method: str, route: str, status: int) -> float:
    return delta(
        after,
        before,
        "relight_http_requests_total",
        method=method,
        route=route,
        status=str(status),
    )


async def test_a_job_is_counted_under_its_backend_and_status_with_requests_and_credits(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    metrics_worker: str,
    receiver: WebhookReceiver,
) -> None:
    async with httpx.AsyncClient() as worker_http:
        api_before = await scrape(client)
        worker_before = await scrape(worker_http, metrics_worker)

        request_id = await submit(client, tenant, fast_body(webhook_url=receiver.url("/hook")))
        record = await wait_until_finished(client, tenant, request_id)
        await receiver.wait_for("/hook", 1)
        unknown = await client.get(f"/v2/requests/{uuid.uuid4()}", headers=tenant.headers)
        nowhere = await client.get("/no/such/path")
        # The attempt is counted once its row commits, just after the receiver answered.
        deadline = time.monotonic() + 5
        while True:
            worker_after = await scrape(worker_http, metrics_worker)
            attempts = delta(
                worker_after, worker_before, "relight_webhook_attempts_total", outcome="delivered"
            )
            if attempts or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        api_after = await scrape(client)

    assert record["status"] == "COMPLETED"
    cost = record["credits"]["charged"]
    assert cost == record["credits"]["reserved"] > 0
    assert attempts == 1

    # The worker's endpoint: the job ended `succeeded` on `local`, was charged, waited in the
    # queue once and took the backend once.
    assert delta(
        worker_after, worker_before, "relight_jobs_total", backend="local", status="succeeded"
    ) == (1)
    assert delta(worker_after, worker_before, "relight_credits_total", movement="charged") == cost
    assert delta(worker_after, worker_before, "relight_queue_wait_seconds_count") == 1
    assert (
        delta(
            worker_after,
            worker_before,
            "relight_backend_duration_seconds_count",
            backend="local",
            outcome="success",
        )
        == 1
    )
    assert worker_after.value("relight_queue_depth") >= 0

    # The api's endpoint: requests by route template and status, submissions, reservations.
    assert requests_delta(api_after, api_before, "POST", "/v2/ic-light", 202) == 1
    polls = requests_delta(api_after, api_before, "GET", "/v2/requests/{request_id}", 200)
    assert polls >= 1
    assert (
        delta(
            api_after,
            api_before,
            "relight_http_request_duration_seconds_count",
            method="GET",
            route="/v2/requests/{request_id}",
        )
        == polls + 1  # and the 404
    )
    assert unknown.status_code == 404
    assert requests_delta(api_after, api_before, "GET", "/v2/requests/{request_id}", 404) == 1
    assert nowhere.status_code == 404
    assert requests_delta(api_after, api_before, "GET", "<unmatched>", 404) == 1
    assert requests_delta(api_after, api_before, "GET", "/metrics", 200) >= 1
    assert delta(api_after, api_before, "relight_jobs_submitted_total", backend="auto") == 1
    assert delta(api_after, api_before, "relight_credits_total", movement="reserved") == cost
    # Raw paths never become series.
    assert not any(request_id in str(labels) for _, labels in api_after.samples)


async def test_queue_depth_cancel_and_refund(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    before = await scrape(client)
    request_id = await submit(client, tenant, fast_body())
    queued = await scrape(client)
    record = await cancel(client, tenant, request_id)
    again = await cancel(client, tenant, request_id)  # canceling twice refunds once
    after = await scrape(client)

    # No worker runs: the job waits in the arq queue (this run's queue, emptied per test).
    assert queued.value("relight_queue_depth") == 1
    assert record["status"] == again["status"] == "CANCELED"
    cost = record["credits"]["reserved"]
    assert delta(after, before, "relight_jobs_total", backend="none", status="canceled") == 1
    assert delta(after, before, "relight_credits_total", movement="reserved") == cost
    assert delta(after, before, "relight_credits_total", movement="refunded") == cost
    assert delta(after, before, "relight_credits_total", movement="charged") == 0


async def test_an_idempotent_replay_is_neither_submitted_nor_reserved_twice(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    before = await scrape(client)
    headers = {**tenant.headers, "Idempotency-Key": "metrics-1"}
    first = await client.post("/v2/ic-light", headers=headers, json=fast_body())
    replay = await client.post("/v2/ic-light", headers=headers, json=fast_body())
    after = await scrape(client)

    assert first.status_code == replay.status_code == 202
    assert replay.headers["Idempotent-Replayed"] == "true"
    cost = first.json()["credits_reserved"]
    assert delta(after, before, "relight_jobs_submitted_total", backend="auto") == 1
    assert delta(after, before, "relight_credits_total", movement="reserved") == cost
    assert requests_delta(after, before, "POST", "/v2/ic-light", 202) == 2


async def test_gpu_node_slots_in_use_are_read_from_redis_at_scrape_time(
    client: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    busy = NodeInfo(id=f"node-{uuid.uuid4().hex[:8]}", url="http://127.0.0.1:1", capacity=2)
    idle = NodeInfo(id=f"node-{uuid.uuid4().hex[:8]}", url="http://127.0.0.1:2", capacity=1)
    leases = [
        await acquire_least_loaded(redis, settings.gpu_namespace, [busy], ttl_s=30)
        for _ in range(2)
    ]
    passing = await acquire_least_loaded(redis, settings.gpu_namespace, [idle], ttl_s=30)
    assert passing is not None
    await release(redis, passing)
    try:
        held = await scrape(client)
        assert held.value("relight_node_slots_in_use", node=busy.id) == 2
        assert held.value("relight_node_slots_in_use", node=idle.id) == 0
    finally:
        for lease in leases:
            assert lease is not None
            await release(redis, lease)
    released = await scrape(client)
    assert released.value("relight_node_slots_in_use", node=busy.id) == 0
