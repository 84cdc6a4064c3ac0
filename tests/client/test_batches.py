"""Batches through `relight-client` against the live stack (`relight-api` and
`relight-worker` processes, Postgres, Redis): a batch runs to COMPLETED and announces itself
once, signed; one the account cannot pay for whole is refused whole."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from relight_client import (
    AsyncRelight,
    ConflictError,
    InsufficientCreditsError,
    NotFoundError,
    Relight,
    Status,
)
from relight_client.admin import Admin
from standardwebhooks import Webhook

from tests.client.conftest import Account, fast
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import png_bytes
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

HOOK = "/batches"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


def test_a_three_item_batch_completes_with_one_signed_batch_completed_webhook(
    client: Relight, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    subject = tmp_path / "subject.png"
    subject.write_bytes(png_bytes((96, 120)))
    secret = client.webhook_secret().secret
    items = [
        {"prompt": f"cat {n}, soft window light", "subject_image": subject, **fast(seed=n)}
        for n in range(3)
    ]

    accepted = client.create_batch(items, webhook_url=receiver.url(HOOK))
    batch = client.wait_batch(accepted.batch_id, timeout=120, poll_interval=0.2)

    assert len(accepted.request_ids) == 3
    assert batch.status == "COMPLETED"
    assert batch.counts == {Status.COMPLETED: 3}
    assert [item.request_id for item in batch.requests] == accepted.request_ids
    assert all(item.output for item in batch.requests)
    assert batch.credits_charged == accepted.credits_reserved
    for request_id in accepted.request_ids:
        assert client.requests.get(request_id).status is Status.COMPLETED
    [delivered] = asyncio.run(receiver.wait_for(HOOK, 1, timeout_s=30))
    payload = Webhook(secret).verify(delivered.body, delivered.headers)
    assert payload["event"] == "batch.completed"
    assert payload["batch_id"] == accepted.batch_id
    assert payload["counts"] == {"COMPLETED": 3}
    assert receiver.received() == [delivered]


def test_a_batch_the_account_cannot_pay_for_whole_makes_no_request(
    admin: Admin, base_url: str
) -> None:
    name = f"client-batch-{uuid.uuid4().hex[:10]}"
    admin.create_tenant(name, credits=2)
    key = admin.create_key(name, "tests").key
    items = [{"prompt": "cat", "subject_image": png_bytes(), **fast()} for _ in range(3)]

    with Relight(base_url, key) as client:
        with pytest.raises(InsufficientCreditsError) as refused:
            client.create_batch(items)
        assert "need 3" in str(refused.value)
        assert client.account().credits == 2
        assert list(client.requests.list()) == []


async def test_the_async_client_submits_reads_and_cancels_a_batch(
    base_url: str, admin: Admin
) -> None:
    name, other_name = (f"client-batch-{uuid.uuid4().hex[:10]}" for _ in range(2))
    admin.create_tenant(name, credits=100)
    admin.create_tenant(other_name, credits=100)
    key = admin.create_key(name, "tests").key
    other_key = admin.create_key(other_name, "tests").key
    items = [{"prompt": "cat", "subject_image": png_bytes(), **fast()} for _ in range(2)]

    async with AsyncRelight(base_url, key) as client:
        accepted = await client.create_batch(items, idempotency_key="async-batch-1")
        replayed = await client.create_batch(items, idempotency_key="async-batch-1")
        canceled = await client.cancel_batch(accepted.batch_id)
        read = await client.get_batch(accepted.batch_id)

    assert replayed.batch_id == accepted.batch_id
    assert replayed.request_ids == accepted.request_ids
    # Each item was canceled, or had already finished on the live worker: either way it ended.
    assert canceled.status == read.status == "COMPLETED"
    assert sum(canceled.counts.values()) == 2
    async with AsyncRelight(base_url, other_key) as other:
        with pytest.raises(NotFoundError):
            await other.get_batch(accepted.batch_id)


async def test_list_batches_follows_every_page_newest_first(
    client: Relight, base_url: str, account: Account
) -> None:
    items = [{"prompt": "cat", "subject_image": png_bytes(), **fast()}]
    made = [client.create_batch(items * size).batch_id for size in (1, 2, 3)]
    deadlined = client.create_batch(items, cancel_after=timedelta(hours=1))

    listed = list(client.list_batches(page_size=2))
    async with AsyncRelight(base_url, account.key) as async_client:
        listed_async = [batch async for batch in async_client.list_batches(page_size=3)]

    assert [batch.batch_id for batch in listed] == [deadlined.batch_id, *reversed(made)]
    assert [batch.batch_id for batch in listed_async] == [batch.batch_id for batch in listed]
    assert [batch.item_count for batch in listed] == [1, 3, 2, 1]
    assert all(sum(batch.counts.values()) == batch.item_count for batch in listed)
    [request_id] = deadlined.request_ids
    record = client.requests.get(request_id)
    assert record.deadline_at is not None
    assert record.deadline_at - record.created_at == timedelta(hours=1)


def test_a_batchs_webhook_is_listed_and_sent_again_with_the_same_id_and_body(
    client: Relight, receiver: WebhookReceiver
) -> None:
    secret = client.webhook_secret().secret
    items = [{"prompt": "cat", "subject_image": png_bytes(), **fast()}]
    accepted = client.create_batch(items, webhook_url=receiver.url(HOOK))
    client.wait_batch(accepted.batch_id, timeout=120, poll_interval=0.2)
    [first] = asyncio.run(receiver.wait_for(HOOK, 1, timeout_s=30))
    # Recorded by the worker (a round asked for while the attempt is in flight joins it).
    asyncio.run(
        wait_until(
            lambda: [d.status for d in client.batch_webhooks(accepted.batch_id)] == ["delivered"],
            what="the batch's webhook to be recorded delivered",
        )
    )

    [delivery] = client.batch_webhooks(accepted.batch_id)
    assert (delivery.event, delivery.webhook_id) == ("batch.completed", first.webhook_id)
    [pending] = client.redeliver_batch_webhooks(accepted.batch_id)
    assert (pending.id, pending.status) == (delivery.id, "pending")

    received = asyncio.run(receiver.wait_for(HOOK, 2, timeout_s=30))
    assert {(hit.webhook_id, hit.body) for hit in received} == {(first.webhook_id, first.body)}
    payload = Webhook(secret).verify(received[-1].body, received[-1].headers)
    assert payload["batch_id"] == accepted.batch_id
    plain = client.create_batch(items)  # no URL here nor on the account
    client.wait_batch(plain.batch_id, timeout=120, poll_interval=0.2)
    with pytest.raises(ConflictError) as refused:
        client.redeliver_batch_webhooks(plain.batch_id)
    assert refused.value.code == "no_webhook"
    assert client.batch_webhooks(plain.batch_id) == []


async def test_the_async_client_lists_and_resends_a_batchs_and_a_requests_webhooks(
    base_url: str, account: Account, receiver: WebhookReceiver
) -> None:
    items = [{"prompt": "cat", "subject_image": png_bytes(), **fast()}]
    async with AsyncRelight(base_url, account.key) as client:
        accepted = await client.create_batch(items, webhook_url=receiver.url(HOOK))
        await client.wait_batch(accepted.batch_id, timeout=120, poll_interval=0.2)
        request = await client.relight(
            png_bytes(), "cat", webhook_url=receiver.url("/one"), **fast()
        )
        await request.wait(timeout=120)
        [batch_first] = await receiver.wait_for(HOOK, 1, timeout_s=30)
        [request_first] = await receiver.wait_for("/one", 1, timeout_s=30)

        async def recorded() -> bool:
            found = [
                *await client.batch_webhooks(accepted.batch_id),
                *await client.requests.webhooks(request.id),
            ]
            return [d.status for d in found] == ["delivered", "delivered"]

        await wait_until(recorded, what="both webhooks to be recorded delivered")

        [batch_delivery] = await client.redeliver_batch_webhooks(accepted.batch_id)
        [request_delivery] = await client.requests.redeliver_webhooks(request.id)
        await receiver.wait_for(HOOK, 2, timeout_s=30)
        await receiver.wait_for("/one", 2, timeout_s=30)

        assert [d.webhook_id for d in await client.batch_webhooks(accepted.batch_id)] == [
            batch_first.webhook_id
        ]
        assert [d.webhook_id for d in await client.requests.webhooks(request.id)] == [
            request_first.webhook_id
        ]
    assert (batch_delivery.event, request_delivery.event) == ("batch.completed", "completed")
    assert {hit.body for hit in receiver.received(HOOK)} == {batch_first.body}
    assert {hit.body for hit in receiver.received("/one")} == {request_first.body}
