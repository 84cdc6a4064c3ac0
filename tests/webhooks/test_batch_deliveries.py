"""A batch's webhook (`batch.completed`) is listed and sent again as a request's is:
`GET /v2/batches/{id}/webhooks`, `POST /v2/batches/{id}/webhooks/redeliver`.

Against the real stack of the other webhook tests: Postgres, Redis, a burst worker running the
classic engine, and a webhook receiver on 127.0.0.1 whose deliveries are verified with the
Standard Webhooks library.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from standardwebhooks import Webhook

from relight.core.config import Settings
from relight.tenants.keys import parse_key
from tests.conftest import MakeTenant, RunWorker, TenantKey
from tests.fakes.webhook_receiver import Reply, WebhookReceiver
from tests.helpers import fast_body, submit

HOOK = "/batch-hook"


async def batch_of(
    client: httpx.AsyncClient, tenant: TenantKey, webhook_url: str | None, items: int = 2
) -> str:
    body: dict[str, Any] = {
        "requests": [fast_body(prompt=f"cat {n}", seed=n) for n in range(items)]
    }
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    response = await client.post("/v2/batches", headers=tenant.headers, json=body)
    assert response.status_code == 202, response.text
    batch_id: str = response.json()["batch_id"]
    return batch_id


async def listed(client: httpx.AsyncClient, tenant: TenantKey, batch_id: str) -> httpx.Response:
    return await client.get(f"/v2/batches/{batch_id}/webhooks", headers=tenant.headers)


async def only_delivery(
    client: httpx.AsyncClient, tenant: TenantKey, batch_id: str
) -> dict[str, Any]:
    response = await listed(client, tenant, batch_id)
    assert response.status_code == 200, response.text
    [delivery] = response.json()["data"]
    found: dict[str, Any] = delivery
    return found


async def redeliver(client: httpx.AsyncClient, tenant: TenantKey, batch_id: str) -> httpx.Response:
    return await client.post(f"/v2/batches/{batch_id}/webhooks/redeliver", headers=tenant.headers)


async def secret_of(client: httpx.AsyncClient, tenant: TenantKey) -> str:
    response = await client.get("/v2/webhooks/secret", headers=tenant.headers)
    assert response.status_code == 200, response.text
    secret: str = response.json()["secret"]
    return secret


def key_prefix(tenant: TenantKey) -> str:
    parsed = parse_key(tenant.key)
    assert parsed is not None
    return parsed[0]


async def test_a_batchs_webhook_is_listed_and_sent_again_with_the_same_id_and_body(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    secret = await secret_of(client, tenant)
    batch_id = await batch_of(client, tenant, receiver.url(HOOK))
    await run_worker()
    [first] = await receiver.wait_for(HOOK, 1)

    delivery = await only_delivery(client, tenant, batch_id)
    assert (delivery["event"], delivery["status"]) == ("batch.completed", "delivered")
    assert delivery["webhook_id"] == first.webhook_id
    assert delivery["url"] == receiver.url(HOOK)
    assert [a["status_code"] for a in delivery["attempt_log"]] == [200]

    response = await redeliver(client, tenant, batch_id)
    assert response.status_code == 202, response.text
    [pending] = response.json()["data"]
    assert (pending["id"], pending["status"]) == (delivery["id"], "pending")
    await run_worker()

    received = await receiver.wait_for(HOOK, 2)
    # At least once: a slow receiver on a loaded machine may see an attempt twice; every one
    # is the first message, under its id, with its bytes.
    assert {(hit.webhook_id, hit.body) for hit in received} == {(first.webhook_id, first.body)}
    payload = Webhook(secret).verify(received[-1].body, received[-1].headers)
    assert (payload["event"], payload["batch_id"]) == ("batch.completed", batch_id)
    again = await only_delivery(client, tenant, batch_id)
    assert again["status"] == "delivered"
    log = again["attempt_log"]
    assert [a["status_code"] for a in log] == [200, 200]
    assert [a["requested_by"] for a in log] == [None, f"api_key:{key_prefix(tenant)}"]


async def test_a_failed_batch_webhook_gets_a_new_round_of_attempts(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    receiver.script(HOOK, [Reply(500)] * 4)  # the first attempt and the schedule's three
    batch_id = await batch_of(client, tenant, receiver.url(HOOK), items=1)
    await run_worker()
    failed = await only_delivery(client, tenant, batch_id)
    assert failed["status"] == "failed"
    assert [a["status_code"] for a in failed["attempt_log"]] == [500] * 4

    receiver.script(HOOK, [Reply(503)])  # back, but not quite yet
    assert (await redeliver(client, tenant, batch_id)).status_code == 202
    await run_worker()

    delivery = await only_delivery(client, tenant, batch_id)
    codes = [a["status_code"] for a in delivery["attempt_log"]]
    assert delivery["status"] == "delivered", f"the new round ended after {codes[4:]}"
    assert codes == [500] * 4 + [503, 200]


async def test_a_batch_not_completed_or_without_a_webhook_is_refused_409(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    unfinished = await batch_of(client, tenant, receiver.url(HOOK))
    response = await redeliver(client, tenant, unfinished)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "not_finished"
    assert "batch" in response.json()["error"]
    # Nothing to list yet: the batch.completed delivery is written when its last item ends.
    assert (await listed(client, tenant, unfinished)).json() == {"data": []}

    plain = await batch_of(client, tenant, None)
    await run_worker()
    response = await redeliver(client, tenant, plain)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "no_webhook"
    assert (await listed(client, tenant, plain)).json() == {"data": []}
    # Only the webhook batch announced itself, once it ended; the refusals sent nothing.
    received = receiver.received(HOOK)
    assert {json.loads(hit.body)["batch_id"] for hit in received} == {unfinished}
    assert len({hit.webhook_id for hit in received}) == 1


async def test_another_accounts_batch_webhooks_are_not_found(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
) -> None:
    owner = await make_tenant("owner")
    other = await make_tenant("other")
    batch_id = await batch_of(client, owner, receiver.url(HOOK), items=1)
    await run_worker()
    await receiver.wait_for(HOOK, 1)

    for response in (
        await listed(client, other, batch_id),
        await redeliver(client, other, batch_id),
        await listed(client, owner, str(uuid.uuid4())),
        await redeliver(client, owner, str(uuid.uuid4())),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "not_found"
    # The other account's attempt queued nothing: the owner's delivery has its one attempt.
    await run_worker()
    assert len((await only_delivery(client, owner, batch_id))["attempt_log"]) == 1


async def test_batches_and_requests_spend_one_redelivery_budget(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    settings: Settings,
) -> None:
    batch_id = await batch_of(client, tenant, receiver.url(HOOK), items=1)
    request_id = await submit(client, tenant, fast_body(webhook_url=receiver.url("/request")))
    await run_worker()
    for _ in range(settings.webhook_redeliver_burst - 1):
        response = await client.post(
            f"/v2/requests/{request_id}/webhooks/redeliver", headers=tenant.headers
        )
        assert response.status_code == 202, response.text
    assert (await redeliver(client, tenant, batch_id)).status_code == 202

    refused = await redeliver(client, tenant, batch_id)

    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "rate_limited"
    assert refused.headers["RateLimit-Policy"].startswith('"redeliver"')
    assert int(refused.headers["Retry-After"]) >= 1
