"""Deadlines (`Cancel-After`, Replicate's header): a request not finished by its deadline ends
CANCELED with error_code `deadline_exceeded`, refunded exactly once, its webhook sent; a
queued one never starts, a running one is stopped as a cancel stops it, and a Redis that lost
everything loses no deadline (the row holds it; the sweep finds it). Real API, worker, Redis,
Postgres and webhook receiver."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook

from relight.backends.attempts import BackendCall
from relight.backends.render_backend import BackendResult, JobInput, ProgressCallback
from relight.core.config import Settings
from relight.core.models import CreditEntry
from relight.core.params import Backend, RelightParams
from relight.core.storage.filesystem import FileSystemStorage
from tests.conftest import MakeTenant, TenantKey, delete_run_keys
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import balance_of, fast_body, get_record, get_status, job_count, submit
from tests.jobs.worker_slots import one_slot_worker
from tests.waiting import wait_until
from worker.tasks import sweep

Sessions = async_sessionmaker[AsyncSession]
CREDITS = 1000


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


class RendersUntilStopped:
    """A `local` backend whose render never ends on its own; it notes being stopped."""

    name = Backend.LOCAL

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()

    async def render(
        self,
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        calls: list[BackendCall],
        progress: ProgressCallback | None = None,
    ) -> BackendResult:
        self.started.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.stopped.set()
        raise AssertionError("unreachable")


async def ledger_kinds(sessionmaker: Sessions, request_id: str) -> Counter[str]:
    async with sessionmaker() as session:
        entries = await session.scalars(
            select(CreditEntry).where(CreditEntry.job_id == uuid.UUID(request_id))
        )
        return Counter(entry.kind for entry in entries)


async def submit_with_deadline(
    client: httpx.AsyncClient, tenant: TenantKey, cancel_after: str, **overrides: Any
) -> dict[str, Any]:
    response = await client.post(
        "/v2/ic-light",
        headers={**tenant.headers, "Cancel-After": cancel_after},
        json=fast_body(backend="local", **overrides),
    )
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def ended(client: httpx.AsyncClient, tenant: TenantKey, request_id: str) -> dict[str, Any]:
    async def finished() -> bool:
        status = await get_status(client, tenant, request_id)
        return status["status"] not in ("QUEUED", "PROCESSING")

    await wait_until(finished, timeout_s=60, what=f"request {request_id} ended")
    return await get_record(client, tenant, request_id)


async def webhook_secret(client: httpx.AsyncClient, tenant: TenantKey) -> str:
    response = await client.get("/v2/webhooks/secret", headers=tenant.headers)
    assert response.status_code == 200, response.text
    secret: str = response.json()["secret"]
    return secret


def assert_deadline_exceeded(record: dict[str, Any]) -> None:
    assert record["status"] == "CANCELED"
    assert record["error_code"] == "deadline_exceeded"
    assert "deadline" in record["error"].lower()
    assert record["credits"]["charged"] == 0
    assert record["outputs"] == []


async def test_a_request_behind_a_busy_worker_ends_canceled_at_its_deadline_refunded_with_webhook(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    settings: Settings,
    sessionmaker: Sessions,
    engine: AsyncEngine,
    receiver: WebhookReceiver,
) -> None:
    tenant = await make_tenant(credits=CREDITS)
    # The worker's only slot renders a request that never ends on its own: the deadline must
    # fire without waiting for a free slot.
    backend = RendersUntilStopped()
    async with one_slot_worker(settings, backend):
        slow = await submit(client, tenant, fast_body(backend="local"))
        await asyncio.wait_for(backend.started.wait(), timeout=30)
        accepted = await submit_with_deadline(
            client, tenant, "1s", webhook_url=receiver.url("/deadline")
        )
        request_id = accepted["request_id"]
        record = await ended(client, tenant, request_id)
        [delivery] = await receiver.wait_for("/deadline", 1, timeout_s=30)
        slow_record = await get_record(client, tenant, slow)

    assert slow_record["status"] == "PROCESSING"
    assert_deadline_exceeded(record)
    # It never started: the deadline passed while it waited for the only slot.
    assert record["attempts"] == 0
    assert record["started_at"] is None
    assert await ledger_kinds(sessionmaker, request_id) == {"reserve": 1, "refund": 1}
    # Only the slow request's reservation is still held.
    slow_reserved = slow_record["credits"]["reserved"]
    assert await balance_of(engine, tenant.tenant_id) == CREDITS - slow_reserved
    payload = Webhook(await webhook_secret(client, tenant)).verify(delivery.body, delivery.headers)
    assert payload["request_id"] == request_id
    assert payload["status"] == "CANCELED"
    assert payload["error_code"] == "deadline_exceeded"


async def test_a_running_request_past_its_deadline_is_stopped_and_refunded(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    settings: Settings,
    sessionmaker: Sessions,
    engine: AsyncEngine,
) -> None:
    tenant = await make_tenant(credits=CREDITS)
    backend = RendersUntilStopped()
    async with one_slot_worker(settings, backend):
        accepted = await submit_with_deadline(client, tenant, "2s")
        request_id = accepted["request_id"]
        await asyncio.wait_for(backend.started.wait(), timeout=30)
        record = await ended(client, tenant, request_id)
        # The render is abandoned, as a canceled one is: the worker's slot is free again.
        await asyncio.wait_for(backend.stopped.wait(), timeout=30)

    assert_deadline_exceeded(record)
    assert record["attempts"] == 1
    assert record["started_at"] is not None
    assert await ledger_kinds(sessionmaker, request_id) == {"reserve": 1, "refund": 1}
    assert await balance_of(engine, tenant.tenant_id) == CREDITS


async def test_a_deadline_survives_a_redis_that_lost_everything(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    settings: Settings,
    sessionmaker: Sessions,
    engine: AsyncEngine,
    redis: Any,
) -> None:
    tenant = await make_tenant(credits=CREDITS)
    accepted = await submit_with_deadline(client, tenant, "1s")
    request_id = accepted["request_id"]
    # What a FLUSHALL does to this run: the queue and the deadline's deferred task are gone.
    await delete_run_keys(redis, settings)
    deadline = datetime.fromisoformat(accepted["deadline_at"])
    await wait_until(
        lambda: datetime.now(UTC) > deadline + timedelta(milliseconds=50),
        what="the deadline passed",
    )
    storage = FileSystemStorage(settings.storage_dir)
    ctx = {"sessionmaker": sessionmaker, "settings": settings, "redis": redis, "storage": storage}

    counts = await sweep(ctx)

    assert counts["deadlines_passed"] == 1
    record = await get_record(client, tenant, request_id)
    assert_deadline_exceeded(record)
    assert record["attempts"] == 0
    assert await ledger_kinds(sessionmaker, request_id) == {"reserve": 1, "refund": 1}
    assert await balance_of(engine, tenant.tenant_id) == CREDITS
    # A second sweep finds nothing more to do: refunded exactly once.
    assert (await sweep(ctx))["deadlines_passed"] == 0


async def test_a_request_that_finishes_in_time_is_charged_and_shows_its_deadline(
    client: httpx.AsyncClient, tenant: TenantKey, settings: Settings
) -> None:
    accepted = await submit_with_deadline(client, tenant, "1m30s")
    created = datetime.fromisoformat(
        (await get_record(client, tenant, accepted["request_id"]))["created_at"]
    )
    async with one_slot_worker(settings):
        record = await ended(client, tenant, accepted["request_id"])
    status = await get_status(client, tenant, accepted["request_id"])

    assert record["status"] == "COMPLETED"
    assert record["credits"]["charged"] == record["credits"]["reserved"]
    deadline = datetime.fromisoformat(record["deadline_at"])
    assert deadline - created == timedelta(minutes=1, seconds=30)
    assert datetime.fromisoformat(accepted["deadline_at"]) == deadline
    assert datetime.fromisoformat(status["deadline_at"]) == deadline


@pytest.mark.parametrize("header", ["soon", "5 minutes", "0s", "-1s", "2d", "25h"])
async def test_a_bad_cancel_after_is_a_422_naming_the_header_and_charges_nothing(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine, header: str
) -> None:
    for path in ("/v2/ic-light", "/v1/ic-light"):
        response = await client.post(
            path, headers={**tenant.headers, "Cancel-After": header}, json=fast_body()
        )

        assert response.status_code == 422, response.text
        body = response.json()
        assert body["code"] == "invalid_cancel_after"
        assert "Cancel-After" in body["error"]
    assert await job_count(engine) == 0
    assert await balance_of(engine, tenant.tenant_id) == CREDITS
