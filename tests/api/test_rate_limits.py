"""Per-tenant rate limits (issue 3, must show 3): GCRA in Redis, IETF headers, honest Retry-After.

Only submits (`POST /v1/ic-light`, `/v2/ic-light`) spend the allowance; every other
authenticated answer only reads it and carries the same headers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relight.core.models import Tenant
from relight.core.ratelimit import RateLimiter, RateLimitPolicy
from relight.tenants.schemas import LimitsUpdate
from relight.tenants.service import set_limits
from tests.conftest import MakeTenant, RunWorker, TenantKey
from tests.helpers import (
    FAST,
    assert_no_server_errors,
    balance_of,
    job_count,
    local_path,
)
from tests.helpers import small_body as body

START_BALANCE = 1000
RATE_LIMIT = re.compile(r'^"tenant";r=(\d+);t=(\d+)$')


@pytest.fixture(autouse=True)
def no_server_errors(client: httpx.AsyncClient) -> Iterator[None]:
    """No answer in these tests may be a 5xx."""
    with assert_no_server_errors(client):
        yield


async def limit(
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant: TenantKey,
    *,
    requests_per_minute: int,
    burst: int,
) -> None:
    """Give `tenant` these limits, through the service the CLI and the admin API use."""
    async with sessionmaker() as session, session.begin():
        found = await session.get(Tenant, tenant.tenant_id)
        assert found is not None
        await set_limits(
            session, found, LimitsUpdate(requests_per_minute=requests_per_minute, burst=burst)
        )


def remaining(response: httpx.Response) -> int:
    """`r` of the answer's `RateLimit` header (which must be there and well formed)."""
    header = response.headers.get("RateLimit")
    assert header is not None, f"{response.request.url.path}: no RateLimit header"
    match = RATE_LIMIT.match(header)
    assert match is not None, header
    return int(match.group(1))


def assert_policy(response: httpx.Response, quota: int, window_s: int) -> None:
    assert response.headers.get("RateLimit-Policy") == f'"tenant";q={quota};w={window_s}'


def retry_after(response: httpx.Response) -> int:
    value = response.headers.get("Retry-After")
    assert value is not None
    assert value.isdigit(), value
    seconds = int(value)
    assert seconds >= 1
    return seconds


def assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "rate_limited"
    retry_after(response)


async def post(client: httpx.AsyncClient, tenant: TenantKey, **overrides: Any) -> httpx.Response:
    return await client.post("/v2/ic-light", headers=tenant.headers, json=body(**overrides))


async def count_entries(engine: AsyncEngine, tenant: TenantKey, kind: str) -> int:
    async with engine.connect() as connection:
        value = await connection.scalar(
            text("select count(*) from credit_entry where tenant_id = :id and kind = :kind"),
            {"id": tenant.tenant_id, "kind": kind},
        )
    return int(value or 0)


async def test_a_burst_above_the_limit_gets_429_with_an_honest_retry_after(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessionmaker: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
) -> None:
    # 40 a minute: one every 1.5 s, so an honest Retry-After must round up (1.5 s -> 2, not 1).
    # Three at once: a spent burst refills in 4.5 s, announced as 5.
    await limit(sessionmaker, tenant, requests_per_minute=40, burst=3)

    accepted = [await post(client, tenant) for _ in range(3)]

    for response in accepted:
        assert response.status_code == 202, response.text
        assert_policy(response, quota=3, window_s=5)
        assert "Retry-After" not in response.headers
    assert [remaining(response) for response in accepted] == [2, 1, 0]
    reserved = sum(response.json()["credits_reserved"] for response in accepted)
    assert reserved > 0

    refused = await post(client, tenant)

    assert_rate_limited(refused)
    assert_policy(refused, quota=3, window_s=5)
    assert remaining(refused) == 0
    wait_s = retry_after(refused)
    assert wait_s in (1, 2)  # the next slot opens within one emission interval (1.5 s)
    # No request was created: the body names the exchange, never a job.
    assert refused.json()["request_id"] == refused.headers["x-request-id"]
    # Nothing was reserved or recorded for the refused request.
    assert await balance_of(engine, tenant.tenant_id) == START_BALANCE - reserved
    assert await count_entries(engine, tenant, "reserve") == 3
    assert await job_count(engine) == 3

    await asyncio.sleep(wait_s)
    after_waiting = await post(client, tenant)

    assert after_waiting.status_code == 202, after_waiting.text
    assert_policy(after_waiting, quota=3, window_s=5)
    assert remaining(after_waiting) >= 0
    assert await count_entries(engine, tenant, "reserve") == 4


async def test_reads_never_spend_and_are_never_rate_limited(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    # One request a minute: nothing grows back while the test runs.
    await limit(sessionmaker, tenant, requests_per_minute=1, burst=3)
    first = await post(client, tenant)
    assert first.status_code == 202, first.text
    request_id = first.json()["request_id"]
    assert (await post(client, tenant)).status_code == 202

    # With one submit left, 20 reads leave it untouched...
    for _ in range(20):
        read = await client.get("/v2/requests", headers=tenant.headers)
        assert read.status_code == 200, read.text
        assert remaining(read) == 1
    last = await post(client, tenant)
    assert last.status_code == 202, last.text
    assert remaining(last) == 0
    # ...and once the burst is spent, status polls still answer, with the headers.
    assert_rate_limited(await post(client, tenant))
    for n in range(20):
        path = f"/v2/requests/{request_id}/status" if n % 2 else "/v2/requests"
        read = await client.get(path, headers=tenant.headers)
        assert read.status_code == 200, read.text
        assert_policy(read, quota=3, window_s=180)
        assert remaining(read) == 0
        assert "Retry-After" not in read.headers
    assert_rate_limited(await post(client, tenant))


async def test_a_throttled_tenant_whose_limits_are_raised_gets_its_next_request_through(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    # One a minute, one at a time: after one submit the next is a minute away.
    await limit(sessionmaker, tenant, requests_per_minute=1, burst=1)
    assert (await post(client, tenant)).status_code == 202
    refused = await post(client, tenant)
    assert_rate_limited(refused)
    assert retry_after(refused) > 30

    # Raised to a burst of 5, refilled one every 10 s: the next four submits cannot outlast a
    # refill however loaded the machine (at 600 a minute a slow fifth submit found one).
    await limit(sessionmaker, tenant, requests_per_minute=6, burst=5)

    # The very next request: what was spent counts as requests under the new limits (1 of 5).
    raised = await post(client, tenant)
    assert raised.status_code == 202, raised.text
    assert_policy(raised, quota=5, window_s=50)
    assert remaining(raised) == 3
    assert [(await post(client, tenant)).status_code for _ in range(3)] == [202] * 3
    assert_rate_limited(await post(client, tenant))

    # Lowered again, the requests already made still count: nothing is left at 1 a minute.
    await limit(sessionmaker, tenant, requests_per_minute=1, burst=2)
    lowered = await post(client, tenant)
    assert_rate_limited(lowered)
    assert_policy(lowered, quota=2, window_s=120)


async def test_a_tenant_at_its_limit_does_not_slow_another(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    a = await make_tenant("tenant-a")
    b = await make_tenant("tenant-b")
    for each in (a, b):
        await limit(sessionmaker, each, requests_per_minute=1, burst=2)
    assert [(await post(client, a)).status_code for _ in range(2)] == [202, 202]
    assert_rate_limited(await post(client, a))

    # B's allowance is whole: a read shows it full, and its submits spend only its own.
    fresh = await client.get("/v2/account", headers=b.headers)
    assert fresh.status_code == 200
    assert remaining(fresh) == 2
    b_first = await post(client, b)
    # A keeps hammering, all at once, while B submits again.
    b_second, *a_again = await asyncio.gather(
        post(client, b), *(post(client, a) for _ in range(10))
    )
    for response in a_again:
        assert_rate_limited(response)

    assert [b_first.status_code, b_second.status_code] == [202, 202]
    assert [remaining(b_first), remaining(b_second)] == [1, 0]
    assert_rate_limited(await post(client, b))
    assert remaining(await client.get("/v2/account", headers=a.headers)) == 0


async def test_concurrent_submits_spend_the_burst_exactly(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessionmaker: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
) -> None:
    await limit(sessionmaker, tenant, requests_per_minute=1, burst=5)

    answers = await asyncio.gather(*(post(client, tenant) for _ in range(20)))

    statuses = sorted(response.status_code for response in answers)
    assert statuses == [202] * 5 + [429] * 15
    accepted = [response for response in answers if response.status_code == 202]
    refused = [response for response in answers if response.status_code == 429]
    # One atomic script per check: each accepted submit saw a different remaining count.
    assert sorted(remaining(response) for response in accepted) == [0, 1, 2, 3, 4]
    for response in refused:
        assert_rate_limited(response)
        assert remaining(response) == 0
    assert await job_count(engine) == 5
    assert await count_entries(engine, tenant, "reserve") == 5
    reserved = sum(response.json()["credits_reserved"] for response in accepted)
    assert await balance_of(engine, tenant.tenant_id) == START_BALANCE - reserved


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_the_limiter_fails_open_when_redis_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A limiter whose Redis does not answer decides nothing (None) and logs a warning; the
    API then lets the request through, without rate-limit headers (see the next test):
    Redis holds counters only, and refusing paid work over a counter would be worse."""
    dead = Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=1)
    try:
        limiter = RateLimiter(dead, f"relight:test:{uuid.uuid4().hex[:8]}:ratelimit")
        policy = RateLimitPolicy(requests_per_minute=1, burst=1)
        with caplog.at_level(logging.WARNING, logger="relight.core.ratelimit"):
            decisions = [await limiter.check("tenant", policy) for _ in range(3)]
    finally:
        await dead.aclose()

    assert decisions == [None, None, None]
    warnings = [
        record
        for record in caplog.records
        if record.name == "relight.core.ratelimit" and record.levelno == logging.WARNING
    ]
    # Counted in a log line, not one per request.
    assert len(warnings) == 1
    assert "letting requests through" in warnings[0].getMessage()


async def test_the_api_lets_submits_through_when_redis_is_down(
    app: FastAPI,
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessionmaker: async_sessionmaker[AsyncSession],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fail open: with the limiter's Redis unreachable, submits beyond the burst are accepted
    (no headers, since nothing was decided); the in-flight cap and credits still hold."""
    await limit(sessionmaker, tenant, requests_per_minute=1, burst=1)
    state = app.state.relight
    working = state.limiter
    dead = Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=1)
    state.limiter = RateLimiter(dead, "relight:test:dead:ratelimit")
    try:
        with caplog.at_level(logging.WARNING, logger="relight.core.ratelimit"):
            answers = [await post(client, tenant) for _ in range(3)]
            read = await client.get("/v2/requests", headers=tenant.headers)
    finally:
        state.limiter = working
        await dead.aclose()

    assert [response.status_code for response in answers] == [202, 202, 202]
    for response in [*answers, read]:
        assert "RateLimit" not in response.headers
        assert "RateLimit-Policy" not in response.headers
    assert read.status_code == 200
    assert any("rate limiter unavailable" in record.getMessage() for record in caplog.records)

    # Back on the working limiter, the burst of 1 is whole again and spent by one submit.
    back = await post(client, tenant)
    assert back.status_code == 202
    assert remaining(back) == 0
    assert_rate_limited(await post(client, tenant))


async def test_every_authenticated_answer_carries_the_headers(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessionmaker: async_sessionmaker[AsyncSession],
    run_worker: RunWorker,
) -> None:
    await limit(sessionmaker, tenant, requests_per_minute=60, burst=4)
    submitted = await post(client, tenant, **FAST)
    assert submitted.status_code == 202, submitted.text
    request_id = submitted.json()["request_id"]
    await run_worker()
    record = await client.get(f"/v2/requests/{request_id}", headers=tenant.headers)
    assert record.json()["status"] == "COMPLETED", record.text
    signed_url = local_path(record.json()["outputs"][0]["url"])
    bearer = {"Authorization": f"Bearer {tenant.key}"}

    answers = {
        "status": await client.get(f"/v2/requests/{request_id}/status", headers=tenant.headers),
        "record": record,
        "list": await client.get("/v2/requests", headers=tenant.headers),
        "account": await client.get("/v2/account", headers=tenant.headers),
        "credits": await client.get("/v1/get-user-credits", headers=tenant.headers),
        "output": await client.get(f"/v2/requests/{request_id}/outputs/0", headers=tenant.headers),
        "bearer": await client.get("/v2/requests", headers=bearer),
        # Errors of authenticated requests carry them too.
        "unknown": await client.get(f"/v2/requests/{uuid.uuid4()}", headers=tenant.headers),
        "not cancelable": await client.post(
            f"/v2/requests/{request_id}/cancel", headers=tenant.headers
        ),
        "invalid body": await client.post(
            "/v2/ic-light", headers=tenant.headers, json={"prompt": "cat"}
        ),
    }

    expected_status = {"unknown": 404, "not cancelable": 409, "invalid body": 422}
    for name, response in answers.items():
        assert response.status_code == expected_status.get(name, 200), (name, response.text)
        assert_policy(response, quota=4, window_s=4)
        assert 0 <= remaining(response) <= 4, name
        assert "Retry-After" not in response.headers, name

    unauthenticated = {
        "no key": await client.get("/v2/requests"),
        "bad key": await client.get("/v2/requests", headers={"x-api-key": "rl_nope"}),
        "bad bearer": await client.get("/v2/account", headers={"Authorization": "Bearer nope"}),
        "submit, no key": await client.post("/v2/ic-light", json=body()),
        "output, no key": await client.get(f"/v2/requests/{request_id}/outputs/0"),
    }
    for name, response in unauthenticated.items():
        assert response.status_code == 401, (name, response.text)
        assert "RateLimit" not in response.headers, name
        assert "RateLimit-Policy" not in response.headers, name
    # The signed output URL needs no key and answers without a tenant's headers.
    signed = await client.get(signed_url)
    assert signed.status_code == 200
