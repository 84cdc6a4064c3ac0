"""Webhook bodies are fixed when the event happens (issue 15, item 4): every attempt of a
delivery, and every redelivery, sends the bytes of the first, under the same `webhook-id`.

Against a real receiver on 127.0.0.1, verified with the `standardwebhooks` library.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from standardwebhooks import Webhook

from tests.conftest import RunWorker, TenantKey
from tests.fakes.webhook_receiver import Received, Reply, WebhookReceiver
from tests.helpers import fast_body as body
from tests.helpers import get_record, submit

HOOK = "/hook"


async def webhook_secret(client: httpx.AsyncClient, tenant: TenantKey) -> str:
    response = await client.get("/v2/webhooks/secret", headers=tenant.headers)
    assert response.status_code == 200, response.text
    secret: str = response.json()["secret"]
    return secret


def verify(secret: str, request: Received) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    return payload


async def test_a_retried_start_webhook_sends_the_body_of_its_first_attempt(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    # The first two arrivals (the start event's first attempt among them, whichever event comes
    # first) are asked to come back in a second: by then the request has completed.
    receiver.script(HOOK, [Reply(503, headers={"Retry-After": "1"})] * 2)
    request_id = await submit(
        client, tenant, body(webhook_url=receiver.url(HOOK), webhook_events=["start", "completed"])
    )
    await run_worker()

    secret = await webhook_secret(client, tenant)
    received = receiver.received(HOOK)
    events = [verify(secret, request)["event"] for request in received]
    starts = [request for request, event in zip(received, events, strict=True) if event == "start"]
    first_completed = events.index("completed")
    assert len(starts) >= 2, events
    # A start attempt went out after the completed event had been sent: the request was done.
    assert received.index(starts[-1]) > first_completed, events
    assert {request.webhook_id for request in starts} == {starts[0].webhook_id}
    assert {request.body for request in starts} == {starts[0].body}
    start = verify(secret, starts[-1])
    assert start["status"] == "PROCESSING"
    assert start["outputs"] == []
    assert start["finished_at"] is None
    # Each attempt is signed afresh (its own timestamp) over the same bytes.
    assert all(verify(secret, request) == start for request in starts)
    assert (await get_record(client, tenant, request_id))["status"] == "COMPLETED"


async def test_a_redelivery_sends_the_bytes_of_the_first_delivery(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()
    # A second later, a body rendered afresh would differ (its signed URLs' expiry).
    await asyncio.sleep(1.1)
    response = await client.post(
        f"/v2/requests/{request_id}/webhooks/redeliver", headers=tenant.headers
    )
    assert response.status_code == 202, response.text
    await run_worker()

    first, again = receiver.received(HOOK)
    secret = await webhook_secret(client, tenant)
    assert verify(secret, again)["status"] == "COMPLETED"
    assert again.webhook_id == first.webhook_id
    # Signed output URLs included: they carry the expiry set when the request completed.
    assert again.body == first.body
