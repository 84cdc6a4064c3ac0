"""A batch's items keep what a single submit gives a request: a `Cancel-After` header on
`POST /v2/batches` is every item's deadline (items canceled by it have ended, so the batch
still completes, once), and each item's `priority` is its lane. Real API, a real worker with
one slot, real Redis, Postgres and webhook receiver."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook

from bench.noop_worker import NoopBackend
from relight.backends.attempts import BackendCall
from relight.backends.render_backend import BackendResult, JobInput, ProgressCallback
from relight.core.config import Settings
from relight.core.params import RelightParams
from tests.conftest import MakeTenant, TenantKey
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import balance_of, fast_body, get_record, job_count, submit
from tests.jobs.test_deadlines import ledger_kinds, webhook_secret
from tests.jobs.test_priority_lanes import start_order
from tests.jobs.worker_slots import one_slot_worker
from tests.waiting import wait_until

Sessions = async_sessionmaker[AsyncSession]
CREDITS = 1000
HOOK = "/batch-deadline"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


class HoldsTheFirstJob(NoopBackend):
    """A `local` backend whose first render waits until the test lets it go; the others
    answer at once. With one slot, it keeps every later job waiting for as long as the test
    needs, however slow the machine."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def render(
        self,
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        calls: list[BackendCall],
        progress: ProgressCallback | None = None,
    ) -> BackendResult:
        if not self.holding.is_set():
            self.holding.set()
            await self.release.wait()
        return await super().render(job_input, params, seed, calls, progress)


def items(count: int, **overrides: Any) -> list[dict[str, Any]]:
    return [fast_body(backend="local", seed=n, **overrides) for n in range(count)]


async def create_batch(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.post(
        "/v2/batches", headers={**tenant.headers, **(headers or {})}, json=body
    )


async def get_batch(client: httpx.AsyncClient, tenant: TenantKey, batch_id: str) -> dict[str, Any]:
    response = await client.get(f"/v2/batches/{batch_id}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def batch_deliveries(engine: AsyncEngine, batch_id: str) -> list[str]:
    """The events of the webhook deliveries written for the batch itself."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("select event from webhook_delivery where batch_id = :id"),
            {"id": uuid.UUID(batch_id)},
        )
        return [row.event for row in rows]


async def test_a_batch_whose_items_pass_their_cancel_after_completes_once_with_them_canceled(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    settings: Settings,
    sessionmaker: Sessions,
    engine: AsyncEngine,
    receiver: WebhookReceiver,
) -> None:
    tenant = await make_tenant(credits=CREDITS)
    secret = await webhook_secret(client, tenant)
    backend = HoldsTheFirstJob()
    async with one_slot_worker(settings, backend):
        blocker = await submit(client, tenant, fast_body(backend="local"))
        await asyncio.wait_for(backend.holding.wait(), timeout=30)
        response = await create_batch(
            client,
            tenant,
            {"requests": items(2), "webhook_url": receiver.url(HOOK)},
            {"Cancel-After": "1s"},
        )
        assert response.status_code == 202, response.text
        accepted = response.json()
        request_ids: list[str] = accepted["request_ids"]
        queued = [await get_record(client, tenant, request_id) for request_id in request_ids]
        deadlines = [datetime.fromisoformat(record["deadline_at"]) for record in queued]
        # The only slot stays taken until every item's deadline has passed.
        await wait_until(
            lambda: datetime.now(UTC) > max(deadlines), what="the items' deadline passed"
        )
        backend.release.set()

        async def batch_done() -> bool:
            view = await get_batch(client, tenant, accepted["batch_id"])
            return bool(view["status"] == "COMPLETED")

        await wait_until(batch_done, timeout_s=60, what="the batch completed")
        [delivery] = await receiver.wait_for(HOOK, 1, timeout_s=30)
        blocker_record = await get_record(client, tenant, blocker)

    for record in queued:
        created = datetime.fromisoformat(record["created_at"])
        assert datetime.fromisoformat(record["deadline_at"]) - created == timedelta(seconds=1)
    view = await get_batch(client, tenant, accepted["batch_id"])
    assert view["counts"] == {"CANCELED": 2}
    assert view["completed_at"] is not None
    assert [item["error_code"] for item in view["requests"]] == ["deadline_exceeded"] * 2
    assert view["credits_charged"] == 0
    for request_id in request_ids:
        record = await get_record(client, tenant, request_id)
        assert (record["status"], record["attempts"]) == ("CANCELED", 0)
        assert await ledger_kinds(sessionmaker, request_id) == {"reserve": 1, "refund": 1}
    payload = Webhook(secret).verify(delivery.body, delivery.headers)
    assert payload["event"] == "batch.completed"
    assert payload["batch_id"] == accepted["batch_id"]
    assert (payload["status"], payload["counts"]) == ("COMPLETED", {"CANCELED": 2})
    assert await batch_deliveries(engine, accepted["batch_id"]) == ["batch.completed"]
    assert blocker_record["status"] == "COMPLETED"
    charged = blocker_record["credits"]["charged"]
    assert await balance_of(engine, tenant.tenant_id) == CREDITS - charged


@pytest.mark.parametrize("header", ["soon", "0s", "25h", "9" * 40 + "h"])
async def test_a_bad_cancel_after_on_a_batch_is_a_422_naming_the_header_and_makes_nothing(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine, header: str
) -> None:
    response = await create_batch(client, tenant, {"requests": items(2)}, {"Cancel-After": header})

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_cancel_after"
    assert "Cancel-After" in response.json()["error"]
    assert await job_count(engine) == 0
    assert await balance_of(engine, tenant.tenant_id) == CREDITS


async def test_a_batch_of_low_items_starts_after_a_later_normal_submit(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    settings: Settings,
    sessionmaker: Sessions,
    redis: ArqRedis,
) -> None:
    tenant = await make_tenant()
    response = await create_batch(client, tenant, {"requests": items(2, priority="low")})
    assert response.status_code == 202, response.text
    low: list[str] = response.json()["request_ids"]
    normal = await submit(client, tenant, fast_body(backend="local"))

    order = await start_order(sessionmaker, settings, redis, [*low, normal])

    assert order == [normal, *low]
    for request_id in low:
        assert (await get_record(client, tenant, request_id))["priority"] == "low"


async def test_a_batch_item_in_a_lane_the_account_may_not_use_refuses_the_batch(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine
) -> None:
    body = {"requests": [*items(1), *items(1, priority="high")]}

    response = await create_batch(client, tenant, body)

    assert response.status_code == 403, response.text
    assert response.json()["code"] == "priority_not_allowed"
    assert response.json()["error"].startswith("requests[1].priority")
    assert await job_count(engine) == 0
    assert await balance_of(engine, tenant.tenant_id) == CREDITS
