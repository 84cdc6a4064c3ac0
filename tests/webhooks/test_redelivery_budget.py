"""Redelivery is not a free amplifier (issue 15, item 3): each tenant has a small budget of
redeliveries (`RELIGHT_WEBHOOK_REDELIVER_BURST` at once, then `…_PER_MINUTE`), a 429 with
`Retry-After` beyond it that sends nothing, and the attempt log says who asked.
"""

from __future__ import annotations

from typing import Any

import httpx

from relight.core.config import Settings
from relight.tenants.keys import parse_key
from tests.conftest import MakeTenant, RunWorker, TenantKey
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import fast_body as body
from tests.helpers import submit

HOOK = "/hook"


async def redeliver(
    client: httpx.AsyncClient, tenant: TenantKey, request_id: str
) -> httpx.Response:
    return await client.post(
        f"/v2/requests/{request_id}/webhooks/redeliver", headers=tenant.headers
    )


async def attempt_log(
    client: httpx.AsyncClient, tenant: TenantKey, request_id: str
) -> list[dict[str, Any]]:
    response = await client.get(f"/v2/requests/{request_id}/webhooks", headers=tenant.headers)
    assert response.status_code == 200, response.text
    [delivery] = response.json()["data"]
    log: list[dict[str, Any]] = delivery["attempt_log"]
    return log


def key_prefix(tenant: TenantKey) -> str:
    parsed = parse_key(tenant.key)
    assert parsed is not None
    return parsed[0]


async def test_a_redelivery_flood_gets_429_after_the_budget_and_sends_nothing_more(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    settings: Settings,
) -> None:
    budget = settings.webhook_redeliver_burst
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()
    assert len(receiver.received(HOOK)) == 1

    answers = [await redeliver(client, tenant, request_id) for _ in range(budget + 10)]

    statuses = [answer.status_code for answer in answers]
    assert statuses == [202] * budget + [429] * 10, statuses
    refused = answers[budget]
    assert refused.json()["code"] == "rate_limited"
    assert "redelivery" in refused.json()["error"]
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 60 // settings.webhook_redeliver_per_minute
    assert refused.headers["RateLimit-Policy"].startswith('"redeliver"')
    await run_worker()
    # Redeliveries while one is pending join its round: the flood sent one more webhook.
    assert len(receiver.received(HOOK)) == 2


async def test_the_attempt_log_says_who_asked_for_a_redelivery(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()
    assert (await redeliver(client, tenant, request_id)).status_code == 202
    await run_worker()

    log = await attempt_log(client, tenant, request_id)
    assert [attempt["requested_by"] for attempt in log] == [None, f"api_key:{key_prefix(tenant)}"]


async def test_refused_redeliveries_do_not_spend_the_budget(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    settings: Settings,
) -> None:
    unfinished = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    for _ in range(settings.webhook_redeliver_burst + 2):
        assert (await redeliver(client, tenant, unfinished)).status_code == 409
    await run_worker()

    assert (await redeliver(client, tenant, unfinished)).status_code == 202


async def test_each_tenant_has_its_own_budget_and_submits_are_not_counted(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    settings: Settings,
) -> None:
    first = await make_tenant("first")
    second = await make_tenant("second")
    first_id = await submit(client, first, body(webhook_url=receiver.url(HOOK)))
    second_id = await submit(client, second, body(webhook_url=receiver.url(HOOK)))
    await run_worker()
    for _ in range(settings.webhook_redeliver_burst):
        assert (await redeliver(client, first, first_id)).status_code == 202
    assert (await redeliver(client, first, first_id)).status_code == 429

    assert (await redeliver(client, second, second_id)).status_code == 202
    await submit(client, first, body())  # the submit limit is another budget
