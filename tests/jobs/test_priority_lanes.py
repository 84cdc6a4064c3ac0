"""Priority lanes: within a tenant a higher lane starts first (`high`, `normal`, `low`);
between tenants fair turns still decide, so one tenant's high lane never starves another
tenant; `high` needs an operator's leave (admin API and `relight-admin`); the sweeper's
re-enqueue keeps a job's lane; the scaling gauge counts each lane. Real API, a real worker
with one slot, real Redis and Postgres."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api.app import create_app
from relight.core.config import Settings
from relight.core.models import Job
from relight.core.storage.filesystem import FileSystemStorage
from tests.conftest import MakeTenant, TenantKey, delete_run_keys
from tests.helpers import balance_of, fast_body, job_count, submit
from tests.jobs.worker_slots import one_slot_worker
from tests.observability.conftest import scrape
from tests.waiting import wait_until
from worker.tasks import sweep

Sessions = async_sessionmaker[AsyncSession]
ADMIN_TOKEN = "y" * 32
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def admin_client(settings: Settings, clean_state: None) -> AsyncIterator[httpx.AsyncClient]:
    """The API with the admin routes on: submits and the operator's calls, one client."""
    application: FastAPI = create_app(settings.model_copy(update={"admin_token": ADMIN_TOKEN}))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def allow_lanes(client: httpx.AsyncClient, tenant: TenantKey, lanes: list[str]) -> None:
    response = await client.put(
        f"/admin/v1/tenants/{tenant.name}/lanes", headers=ADMIN, json={"lanes": lanes}
    )
    assert response.status_code == 200, response.text
    assert response.json()["allowed_lanes"] == lanes


async def submit_in(
    client: httpx.AsyncClient, tenant: TenantKey, priority: str | None = None
) -> str:
    body = fast_body(backend="local")
    if priority is not None:
        body["priority"] = priority
    return await submit(client, tenant, body)


async def start_order(
    sessionmaker: Sessions, settings: Settings, redis: ArqRedis, ids: list[str]
) -> list[str]:
    """Run the queued jobs `ids` on one worker with one slot; their ids by start time."""
    job_ids = [uuid.UUID(request_id) for request_id in ids]

    async def all_done() -> bool:
        async with sessionmaker() as session:
            statuses = (await session.scalars(select(Job.status).where(Job.id.in_(job_ids)))).all()
        in_queue = await redis.zmscore(settings.queue_name, ids)
        return all(s == "succeeded" for s in statuses) and all(x is None for x in in_queue)

    async with one_slot_worker(settings):
        await wait_until(all_done, timeout_s=60, what="every job succeeded")
    async with sessionmaker() as session:
        rows = (
            await session.execute(select(Job.id, Job.started_at).where(Job.id.in_(job_ids)))
        ).all()
    started: dict[str, datetime] = {str(row.id): row.started_at for row in rows}
    return sorted(ids, key=lambda request_id: started[request_id])


async def test_a_low_request_submitted_before_a_normal_one_starts_after_it(
    admin_client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    settings: Settings,
    sessionmaker: Sessions,
    redis: ArqRedis,
) -> None:
    tenant = await make_tenant()
    await allow_lanes(admin_client, tenant, ["high", "normal", "low"])
    low = [await submit_in(admin_client, tenant, "low") for _ in range(2)]
    normal = await submit_in(admin_client, tenant)
    high = await submit_in(admin_client, tenant, "high")

    order = await start_order(sessionmaker, settings, redis, [*low, normal, high])

    assert order == [high, normal, *low]


async def test_a_tenants_high_lane_does_not_starve_another_tenant(
    admin_client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    settings: Settings,
    sessionmaker: Sessions,
    redis: ArqRedis,
) -> None:
    busy = await make_tenant("busy")
    other = await make_tenant("other")
    await allow_lanes(admin_client, busy, ["high", "normal", "low"])
    backlog = [await submit_in(admin_client, busy, "high") for _ in range(8)]
    single = await submit_in(admin_client, other, "low")

    order = await start_order(sessionmaker, settings, redis, [*backlog, single])

    # The other tenant waits for at most the job that was starting when its turn came, not
    # for the busy tenant's high lane to drain.
    assert order.index(single) <= 1


async def test_high_is_refused_with_403_until_an_operator_allows_it(
    admin_client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine
) -> None:
    refused = await admin_client.post(
        "/v2/ic-light", headers=tenant.headers, json=fast_body(priority="high")
    )

    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "priority_not_allowed"
    assert "high" in refused.json()["error"]
    assert await job_count(engine) == 0
    assert await balance_of(engine, tenant.tenant_id) == 1000
    # normal and low are every tenant's by default.
    for lane in ("normal", "low"):
        response = await admin_client.post(
            "/v2/ic-light", headers=tenant.headers, json=fast_body(priority=lane)
        )
        assert response.status_code == 202, response.text
        assert response.json()["priority"] == lane

    await allow_lanes(admin_client, tenant, ["high", "normal"])
    allowed = await admin_client.post(
        "/v2/ic-light", headers=tenant.headers, json=fast_body(priority="high")
    )
    low = await admin_client.post(
        "/v2/ic-light", headers=tenant.headers, json=fast_body(priority="low")
    )

    assert allowed.status_code == 202, allowed.text
    assert low.status_code == 403, low.text
    assert low.json()["code"] == "priority_not_allowed"


async def test_an_unknown_lane_is_a_422_naming_the_field(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await client.post(
        "/v2/ic-light", headers=tenant.headers, json=fast_body(priority="urgent")
    )

    assert response.status_code == 422, response.text
    assert "priority" in response.text


async def test_the_sweepers_re_enqueue_keeps_the_lane(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    settings: Settings,
    sessionmaker: Sessions,
    redis: ArqRedis,
) -> None:
    tenant = await make_tenant()
    low = await submit_in(client, tenant, "low")
    normal = await submit_in(client, tenant)
    # What a FLUSHALL does to this run: the queue, the tenant turns and the jobs' arq keys.
    await delete_run_keys(redis, settings)
    await redis.delete(*(job_key_prefix + job for job in (low, normal)))
    no_grace = settings.model_copy(update={"requeue_grace_s": 0.001})
    storage = FileSystemStorage(settings.storage_dir)
    ctx = {"sessionmaker": sessionmaker, "settings": no_grace, "redis": redis, "storage": storage}

    assert (await sweep(ctx))["requeued"] == 2
    order = await start_order(sessionmaker, settings, redis, [low, normal])

    assert order == [normal, low]


async def test_the_scaling_gauge_counts_each_lane(
    admin_client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await allow_lanes(admin_client, tenant, ["high", "normal", "low"])
    for lane in ("high", "normal", "normal", "low", "low", "low"):
        await submit_in(admin_client, tenant, lane)

    scraped = await scrape(admin_client)

    assert scraped.value("relight_runnable_jobs", lane="high") == 1
    assert scraped.value("relight_runnable_jobs", lane="normal") == 2
    assert scraped.value("relight_runnable_jobs", lane="low") == 3
    # Every entry of arq's queue, as before lanes.
    assert scraped.value("relight_queue_depth") == 6
