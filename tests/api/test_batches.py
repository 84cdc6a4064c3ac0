"""Batches (issue 26): many requests in one call, aggregated, ended once.

Against the real stack of the other API tests: Postgres, Redis, a burst worker running the
classic engine, and a webhook receiver on 127.0.0.1 whose deliveries are verified with the
Standard Webhooks library."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from standardwebhooks import Webhook

from relight.core.config import Settings
from relight.core.storage.urls import UrlBuilder
from relight.core.unit_of_work import unit_of_work
from relight.credits.service import audit_ledger
from relight.jobs import lifecycle
from tests.conftest import MakeTenant, RunWorker, TenantKey
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import balance_of, cancel, fast_body, job_count
from tests.waiting import wait_until

HOOK = "/batch-hook"
# What `fast_body` costs (one 256×256 image at 10 steps): the minimum, 1 credit.
ITEM_COST = 1


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


async def create_batch(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.post(
        "/v2/batches", headers={**tenant.headers, **(headers or {})}, json=body
    )


async def accepted_batch(
    client: httpx.AsyncClient, tenant: TenantKey, body: dict[str, Any]
) -> dict[str, Any]:
    response = await create_batch(client, tenant, body)
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


async def get_batch(client: httpx.AsyncClient, tenant: TenantKey, batch_id: str) -> dict[str, Any]:
    response = await client.get(f"/v2/batches/{batch_id}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def webhook_secret(client: httpx.AsyncClient, tenant: TenantKey) -> str:
    response = await client.get("/v2/webhooks/secret", headers=tenant.headers)
    assert response.status_code == 200, response.text
    secret: str = response.json()["secret"]
    return secret


async def batch_deliveries(engine: AsyncEngine, batch_id: str) -> list[str]:
    """The events of the webhook deliveries written for the batch itself."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("select event from webhook_delivery where batch_id = :id"),
            {"id": uuid.UUID(batch_id)},
        )
        return [row.event for row in rows]


async def waiting_on_a_lock(engine: AsyncEngine) -> bool:
    """Whether a session of this database waits for a lock another transaction holds."""
    async with engine.connect() as connection:
        waiting = await connection.scalar(
            text(
                "select count(*) from pg_stat_activity "
                "where datname = current_database() and wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def batch_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("select count(*) from batch")) or 0)


def path_of(url: str) -> str:
    """A signed URL without its query (two signings differ in expiry)."""
    return urlsplit(url).path


def three_items() -> list[dict[str, Any]]:
    return [fast_body(prompt=f"cat {n}, soft window light", seed=n) for n in range(3)]


async def test_a_three_item_batch_runs_to_completed_with_one_signed_batch_completed_webhook(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    engine: AsyncEngine,
) -> None:
    tenant = await make_tenant(credits=100)
    secret = await webhook_secret(client, tenant)
    accepted = await accepted_batch(
        client, tenant, {"requests": three_items(), "webhook_url": receiver.url(HOOK)}
    )
    batch_id = accepted["batch_id"]
    assert len(accepted["request_ids"]) == 3
    assert accepted["credits_reserved"] == 3 * ITEM_COST
    assert accepted["status_url"].endswith(f"/v2/batches/{batch_id}")
    queued = await get_batch(client, tenant, batch_id)
    assert (queued["status"], queued["counts"]) == ("QUEUED", {"QUEUED": 3})
    assert [item["request_id"] for item in queued["requests"]] == accepted["request_ids"]

    await run_worker()

    [delivered] = await receiver.wait_for(HOOK, 1)
    payload = Webhook(secret).verify(delivered.body, delivered.headers)
    assert payload["event"] == "batch.completed"
    assert payload["batch_id"] == batch_id
    assert (payload["status"], payload["counts"]) == ("COMPLETED", {"COMPLETED": 3})
    assert [item["request_id"] for item in payload["requests"]] == accepted["request_ids"]
    assert all(item["output"] for item in payload["requests"])
    # The worker is done (its queue is empty): every delivery it had was sent, and there was
    # one, the batch's; its items announced nothing of their own (not asked for).
    assert receiver.received() == [delivered]
    assert await batch_deliveries(engine, batch_id) == ["batch.completed"]
    done = await get_batch(client, tenant, batch_id)
    assert done["status"] == "COMPLETED"
    assert done["completed_at"] is not None
    assert done["credits_charged"] == 3 * ITEM_COST
    for item in done["requests"]:
        record = await client.get(f"/v2/requests/{item['request_id']}", headers=tenant.headers)
        assert record.json()["status"] == "COMPLETED"
        assert path_of(record.json()["output"]) == path_of(item["output"])
    assert await balance_of(engine, tenant.tenant_id) == 100 - 3 * ITEM_COST


async def test_items_own_events_are_sent_when_the_batch_lists_them(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
) -> None:
    tenant = await make_tenant(credits=100)
    accepted = await accepted_batch(
        client,
        tenant,
        {
            "requests": three_items()[:2],
            "webhook_url": receiver.url(HOOK),
            "webhook_events": ["completed", "batch.completed"],
        },
    )
    await run_worker()
    received = await receiver.wait_for(HOOK, 3)
    bodies = [httpx.Response(200, content=request.body).json() for request in received]
    assert sorted(body["event"] for body in bodies) == ["batch.completed", "completed", "completed"]
    assert {body.get("request_id") for body in bodies if body["event"] == "completed"} == set(
        accepted["request_ids"]
    )


async def test_a_batch_the_account_cannot_pay_for_whole_is_refused_406_and_nothing_reserved(
    client: httpx.AsyncClient, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    tenant = await make_tenant(credits=2 * ITEM_COST)

    response = await create_batch(client, tenant, {"requests": three_items()})

    assert response.status_code == 406, response.text
    error = response.json()
    assert error["code"] == "insufficient_credits"
    assert "need 3" in error["error"], error["error"]
    assert "has 2" in error["error"], error["error"]
    assert (error["required"], error["available"], error["shortfall"]) == (3, 2, 1)
    assert await balance_of(engine, tenant.tenant_id) == 2 * ITEM_COST
    assert await job_count(engine) == 0
    assert await batch_count(engine) == 0


async def test_a_batch_beyond_the_in_flight_limit_is_refused_whole(
    client: httpx.AsyncClient, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    tenant = await make_tenant(credits=100)
    async with engine.begin() as connection:
        await connection.execute(
            text("update tenant set max_in_flight = 2 where id = :id"), {"id": tenant.tenant_id}
        )

    response = await create_batch(client, tenant, {"requests": three_items()})

    assert response.status_code == 429, response.text
    assert response.json()["code"] == "too_many_jobs"
    assert (response.json()["required"], response.json()["available"]) == (3, 2)
    assert await balance_of(engine, tenant.tenant_id) == 100
    assert await job_count(engine) == 0


@pytest.mark.parametrize(
    ("item", "status", "field", "message_start"),
    [
        ({"cfg": 100}, 422, "requests[1].cfg", "requests[1].cfg: "),
        ({"prompt": None}, 422, "requests[1].prompt", "requests[1].prompt: "),
        (
            {"subject_image": "@@not base64@@"},
            400,
            "requests[1].subject_image",
            "requests[1].subject_image ",
        ),
        ({"webhook_url": "http://127.0.0.1/x"}, 422, "requests[1].webhook_url", "requests[1]."),
    ],
)
async def test_a_bad_item_is_refused_naming_its_index_and_nothing_is_made(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    engine: AsyncEngine,
    item: dict[str, Any],
    status: int,
    field: str | None,
    message_start: str,
) -> None:
    items = three_items()
    items[1] = {**items[1], **item}

    response = await create_batch(client, tenant, {"requests": items})

    assert response.status_code == status, response.text
    error = response.json()
    assert error["error"].startswith(message_start), error
    if field is not None:
        assert error["field"] == field
    assert await job_count(engine) == 0
    assert await balance_of(engine, tenant.tenant_id) == 1000


async def test_a_batch_holds_at_most_max_batch_size_requests(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine
) -> None:
    items = [fast_body(prompt="cat", subject_image="http://127.0.0.1/cat.png")] * 101

    too_many = await create_batch(client, tenant, {"requests": items})
    empty = await create_batch(client, tenant, {"requests": []})

    assert too_many.status_code == 422, too_many.text
    assert "at most 100" in too_many.json()["error"]
    assert empty.status_code == 422, empty.text
    assert empty.json()["field"] == "requests"
    assert await job_count(engine) == 0


async def test_a_batch_is_json_only(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    response = await client.post("/v2/batches", headers=tenant.headers, data={"requests": "x"})
    assert response.status_code == 415, response.text


async def test_the_same_idempotency_key_and_body_answer_the_same_batch(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine
) -> None:
    body = {"requests": three_items()}
    key = {"Idempotency-Key": "catalogue-2026-12-07"}

    first = await create_batch(client, tenant, body, key)
    again = await create_batch(client, tenant, body, key)
    different = await create_batch(client, tenant, {"requests": three_items()[:2]}, key)

    assert first.status_code == again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert await job_count(engine) == 3
    assert await balance_of(engine, tenant.tenant_id) == 1000 - 3 * ITEM_COST
    assert different.status_code == 422, different.text
    assert different.json()["code"] == "idempotency_key_reused"
    assert await job_count(engine) == 3


async def test_canceling_a_batch_cancels_and_refunds_every_unfinished_item_once(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await make_tenant(credits=100)
    secret = await webhook_secret(client, tenant)
    accepted = await accepted_batch(
        client, tenant, {"requests": three_items(), "webhook_url": receiver.url(HOOK)}
    )
    batch_id = accepted["batch_id"]
    # One item canceled on its own first: the batch's cancel leaves it as it is.
    await cancel(client, tenant, accepted["request_ids"][0])
    assert (await get_batch(client, tenant, batch_id))["status"] == "PROCESSING"

    response = await client.post(f"/v2/batches/{batch_id}/cancel", headers=tenant.headers)
    again = await client.post(f"/v2/batches/{batch_id}/cancel", headers=tenant.headers)

    assert response.status_code == again.status_code == 200, response.text
    view = response.json()
    assert (view["status"], view["counts"]) == ("COMPLETED", {"CANCELED": 3})
    assert all(item["error_code"] == "canceled" for item in view["requests"])
    assert await balance_of(engine, tenant.tenant_id) == 100
    async with engine.connect() as connection:
        refunds = await connection.scalar(
            text("select count(*) from credit_entry where kind = 'refund' and tenant_id = :t"),
            {"t": tenant.tenant_id},
        )
    assert refunds == 3
    async with sessionmaker() as session:
        assert await audit_ledger(session) == []
    await run_worker()
    [delivered] = await receiver.wait_for(HOOK, 1)
    payload = Webhook(secret).verify(delivered.body, delivered.headers)
    assert (payload["event"], payload["counts"]) == ("batch.completed", {"CANCELED": 3})
    assert await batch_deliveries(engine, batch_id) == ["batch.completed"]


async def test_two_items_ending_at_once_complete_the_batch_exactly_once(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    """The last two items end in two transactions open at the same time (as two workers
    finishing them would): the first has ended its item but not committed when the second
    ends the other. One of them, never none and never both, ends the batch."""
    tenant = await make_tenant(credits=100)
    accepted = await accepted_batch(
        client, tenant, {"requests": three_items()[:2], "webhook_url": "http://127.0.0.1/h"}
    )
    first, second = (uuid.UUID(request_id) for request_id in accepted["request_ids"])
    urls = UrlBuilder.background(settings)

    async def end_second() -> None:
        async with unit_of_work(sessionmaker) as uow:
            assert await lifecycle.cancel(uow.session, second, urls) is not None

    async with unit_of_work(sessionmaker) as uow:
        assert await lifecycle.cancel(uow.session, first, urls) is not None
        other = asyncio.create_task(end_second())
        # The second transaction reaches the batch while the first still holds it open.

        async def met_or_done() -> bool:
            return other.done() or await waiting_on_a_lock(engine)

        await wait_until(
            met_or_done,
            what="the second item's end to meet the first's open transaction",
        )
    await other

    assert await batch_deliveries(engine, accepted["batch_id"]) == ["batch.completed"]
    assert (await get_batch(client, tenant, accepted["batch_id"]))["status"] == "COMPLETED"


async def test_another_accounts_batch_is_not_found(
    client: httpx.AsyncClient, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    owner = await make_tenant(credits=100)
    other = await make_tenant(credits=100)
    accepted = await accepted_batch(client, owner, {"requests": three_items()[:1]})
    batch_id = accepted["batch_id"]

    read = await client.get(f"/v2/batches/{batch_id}", headers=other.headers)
    canceled = await client.post(f"/v2/batches/{batch_id}/cancel", headers=other.headers)
    unknown = await client.get(f"/v2/batches/{uuid.uuid4()}", headers=owner.headers)

    assert read.status_code == canceled.status_code == unknown.status_code == 404
    assert read.json()["code"] == "not_found"
    assert (await get_batch(client, owner, batch_id))["counts"] == {"QUEUED": 1}
    assert await balance_of(engine, owner.tenant_id) == 100 - ITEM_COST


async def list_page(client: httpx.AsyncClient, tenant: TenantKey, **params: Any) -> dict[str, Any]:
    response = await client.get("/v2/batches", headers=tenant.headers, params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def test_batches_are_listed_newest_first_in_cursor_pages_with_their_counts(
    client: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant(credits=100)
    other = await make_tenant(credits=100)
    sizes = (1, 2, 3)
    made = [
        (await accepted_batch(client, tenant, {"requests": three_items()[:size]}))["batch_id"]
        for size in sizes
    ]
    await accepted_batch(client, other, {"requests": three_items()[:1]})
    oldest = made[0]
    await client.post(f"/v2/batches/{oldest}/cancel", headers=tenant.headers)

    first = await list_page(client, tenant, limit=2)
    second = await list_page(client, tenant, limit=2, cursor=first["next_cursor"])

    assert [batch["batch_id"] for batch in first["data"]] == [made[2], made[1]]
    assert first["next_cursor"] == made[1]
    assert [batch["batch_id"] for batch in second["data"]] == [oldest]
    assert second["next_cursor"] is None
    newest = first["data"][0]
    assert (newest["status"], newest["counts"], newest["item_count"]) == (
        "QUEUED",
        {"QUEUED": 3},
        3,
    )
    assert newest["credits_reserved"] == 3 * ITEM_COST
    assert newest["status_url"].endswith(f"/v2/batches/{made[2]}")
    assert "requests" not in newest
    canceled = second["data"][0]
    assert (canceled["status"], canceled["counts"]) == ("COMPLETED", {"CANCELED": 1})
    assert canceled["completed_at"] is not None
    assert (canceled["credits_reserved"], canceled["credits_charged"]) == (ITEM_COST, 0)


async def test_listing_batches_checks_its_query(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    empty = await list_page(client, tenant)
    bad_cursor = await client.get(
        "/v2/batches", headers=tenant.headers, params={"cursor": "not-an-id"}
    )
    too_many = await client.get("/v2/batches", headers=tenant.headers, params={"limit": 101})
    anonymous = await client.get("/v2/batches")

    assert empty == {"data": [], "next_cursor": None}
    assert bad_cursor.status_code == too_many.status_code == 422
    assert anonymous.status_code == 401
