"""Webhook delivery (issue 4, must show 1, 2, 4, 5) against a real receiver on 127.0.0.1.

Signed with Standard Webhooks and verified with the official library; retried on the test
schedule (0.05 s × 3) with the same `webhook-id`; 410 stops, redirects are not followed, hangs
are cut off; a rotation signs with both secrets; rows, not Redis, decide what gets delivered.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import math
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from arq.connections import ArqRedis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from standardwebhooks import Webhook, WebhookVerificationError

from relight.core.config import Settings
from relight.core.storage import FileSystemStorage
from relight.core.storage.urls import UrlBuilder
from relight.webhooks.delivery import WebhookSender
from relight.webhooks.service import claim_attempt
from tests.conftest import MakeTenant, RunWorker, TenantKey, delete_run_keys
from tests.fakes.image_server import ImageServer
from tests.fakes.webhook_receiver import Received, Reply, WebhookReceiver
from tests.helpers import cancel, get_record, submit
from tests.helpers import fast_body as body
from worker.settings import build_worker
from worker.tasks import deliver_webhook, sweep

HOOK = "/hook"

Sessions = async_sessionmaker[AsyncSession]


async def webhook_secret(client: httpx.AsyncClient, tenant: TenantKey) -> str:
    response = await client.get("/v2/webhooks/secret", headers=tenant.headers)
    assert response.status_code == 200, response.text
    secret: str = response.json()["secret"]
    return secret


async def deliveries(
    client: httpx.AsyncClient, tenant: TenantKey, request_id: str
) -> list[dict[str, Any]]:
    response = await client.get(f"/v2/requests/{request_id}/webhooks", headers=tenant.headers)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def redeliver(
    client: httpx.AsyncClient, tenant: TenantKey, request_id: str
) -> httpx.Response:
    return await client.post(
        f"/v2/requests/{request_id}/webhooks/redeliver", headers=tenant.headers
    )


async def only_delivery(
    client: httpx.AsyncClient, tenant: TenantKey, request_id: str
) -> dict[str, Any]:
    found = await deliveries(client, tenant, request_id)
    assert len(found) == 1, found
    return found[0]


def verify(secret: str, request: Received) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    return payload


def path_of(url: str) -> str:
    """An absolute URL's path (and query), for the ASGI test client."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def comparable(view: dict[str, Any]) -> dict[str, Any]:
    """A request record with its URLs reduced to paths (the worker and the test client differ
    in base URL, and a signed output URL in its expiry)."""
    result = dict(view)
    for key in ("status_url", "response_url", "stream_url"):
        result[key] = urlsplit(result[key]).path
    result["outputs"] = [
        {**output, "url": urlsplit(output["url"]).path} for output in result["outputs"]
    ]
    output = result["output"]
    if isinstance(output, str):
        result["output"] = urlsplit(output).path
    elif isinstance(output, list):
        result["output"] = [urlsplit(url).path for url in output]
    return result


async def delivery_ids(engine: AsyncEngine) -> list[uuid.UUID]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("select id from webhook_delivery order by created_at"))
        return [row.id for row in rows]


async def forget_queue(redis: ArqRedis, settings: Settings, engine: AsyncEngine) -> None:
    """Lose what Redis knew of this run: its queue, and the queued jobs of its deliveries (only
    this run's: another test run may share the Redis database)."""
    await delete_run_keys(redis, settings)
    for delivery_id in await delivery_ids(engine):
        keys = [key async for key in redis.scan_iter(match=f"arq:job:webhook:{delivery_id}:*")]
        if keys:
            await redis.delete(*keys)


def sweeper_ctx(sessionmaker: Sessions, settings: Settings, redis: ArqRedis) -> dict[str, Any]:
    """The worker context the sweeper task reads."""
    return {
        "sessionmaker": sessionmaker,
        "settings": settings,
        "redis": redis,
        "storage": FileSystemStorage(settings.storage_dir),
    }


async def canceled_and_unqueued(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    receiver: WebhookReceiver,
    redis: ArqRedis,
    settings: Settings,
    engine: AsyncEngine,
) -> tuple[str, uuid.UUID]:
    """A canceled request whose one delivery row is committed but no longer queued in Redis."""
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await cancel(client, tenant, request_id)
    await forget_queue(redis, settings, engine)
    [delivery_id] = await delivery_ids(engine)
    return request_id, delivery_id


async def sweep_webhooks(ctx: dict[str, Any]) -> int:
    """Run the sweeper task once; how many due webhook deliveries it queued."""
    counts = await sweep(ctx)
    return counts["webhooks_due"]


# --- must show 1: signed, verifiable, the request record ------------------------------------


async def test_completed_webhook_verifies_and_carries_the_signed_record(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    prompt = "chat, lumière douce du soir — ☀"  # the signature covers UTF-8 bytes, too
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK), prompt=prompt))
    await run_worker()

    [request] = receiver.received(HOOK)
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.webhook_id.startswith("msg_")
    assert abs(int(request.headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 30
    secret = await webhook_secret(client, tenant)
    assert secret.startswith("whsec_")
    payload = verify(secret, request)

    # The body is GET /v2/requests/{id} plus the event.
    assert payload["event"] == "completed"
    assert payload["status"] == "COMPLETED"
    record = await get_record(client, tenant, request_id)
    assert set(payload) == set(record) | {"event"}
    assert comparable({k: v for k, v in payload.items() if k != "event"}) == comparable(record)
    assert payload["request_id"] == request_id
    assert payload["params"]["prompt"] == prompt
    assert len(payload["outputs"]) == 1
    # Segmind's field, too: `output` is the image URL.
    assert payload["output"] == payload["outputs"][0]["url"]

    # Its output URLs are signed: downloadable without an API key.
    for output in payload["outputs"]:
        assert "signature=" in output["url"]
        assert "expires=" in output["url"]
        image = await client.get(path_of(output["url"]))
        assert image.status_code == 200, image.text
        assert hashlib.sha256(image.content).hexdigest() == output["sha256"]
        assert image.headers["content-type"] == output["content_type"] == "image/png"

    # The delivery is recorded with the same webhook-id.
    delivery = await only_delivery(client, tenant, request_id)
    assert delivery["webhook_id"] == request.webhook_id
    assert delivery["event"] == "completed"
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 1
    assert [a["status_code"] for a in delivery["attempt_log"]] == [200]


async def test_tampered_body_or_old_timestamp_does_not_verify(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()
    [request] = receiver.received(HOOK)
    secret = await webhook_secret(client, tenant)
    verify(secret, request)  # the genuine one does

    tampered = request.body.replace(b'"COMPLETED"', b'"FAILED"', 1)
    assert tampered != request.body
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(request.body + b" ", request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(request.body, {**request.headers, "webhook-id": "msg_other"})

    # An altered timestamp breaks the signature …
    shifted = str(int(request.headers["webhook-timestamp"]) - 1)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(request.body, {**request.headers, "webhook-timestamp": shifted})
    # … and a correctly signed message from 10 minutes ago is a replay.
    old = datetime.now(UTC) - timedelta(minutes=10)
    replay = {
        **request.headers,
        "webhook-timestamp": str(math.floor(old.timestamp())),
        "webhook-signature": Webhook(secret).sign(request.webhook_id, old, request.body.decode()),
    }
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(request.body, replay)
    # Another tenant's secret does not verify it either.
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"k" * 32).decode()).verify(
            request.body, request.headers
        )


async def test_start_and_completed_events_arrive_in_order(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    request_id = await submit(
        client,
        tenant,
        body(
            webhook_url=receiver.url(HOOK),
            webhook_events=["start", "completed"],
            width=768,
            height=768,
        ),
    )
    await run_worker()

    received = receiver.received(HOOK)
    secret = await webhook_secret(client, tenant)
    events = [verify(secret, request)["event"] for request in received]
    assert events == ["start", "completed"]
    assert received[0].webhook_id != received[1].webhook_id
    assert verify(secret, received[1])["status"] == "COMPLETED"

    recorded = await deliveries(client, tenant, request_id)
    assert [d["event"] for d in recorded] == ["start", "completed"]
    assert {d["webhook_id"] for d in recorded} == {r.webhook_id for r in received}
    assert all(d["status"] == "delivered" for d in recorded)


async def test_only_completed_is_sent_by_default(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()
    assert len(receiver.received(HOOK)) == 1
    assert [d["event"] for d in await deliveries(client, tenant, request_id)] == ["completed"]


async def test_webhook_events_choose_what_is_sent(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    start_only = await submit(
        client, tenant, body(webhook_url=receiver.url("/start"), webhook_events=["start"])
    )
    twice = await submit(
        client,
        tenant,
        body(webhook_url=receiver.url("/twice"), webhook_events=["completed", "completed"]),
    )
    response = await client.post(
        "/v2/ic-light",
        headers=tenant.headers,
        json=body(webhook_url=receiver.url(HOOK), webhook_events=["finished"]),
    )
    assert response.status_code == 422, response.text
    await run_worker()

    secret = await webhook_secret(client, tenant)
    assert [verify(secret, r)["event"] for r in receiver.received("/start")] == ["start"]
    assert [d["event"] for d in await deliveries(client, tenant, start_only)] == ["start"]
    assert [verify(secret, r)["event"] for r in receiver.received("/twice")] == ["completed"]
    assert len(await deliveries(client, tenant, twice)) == 1
    assert receiver.received(HOOK) == []


async def test_deliveries_are_visible_to_their_tenant_only(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    make_tenant: MakeTenant,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
) -> None:
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()
    other = await make_tenant("globex")
    base = f"/v2/requests/{request_id}/webhooks"
    assert (await client.get(base, headers=other.headers)).status_code == 404
    assert (await client.post(f"{base}/redeliver", headers=other.headers)).status_code == 404
    assert (await client.get(base)).status_code == 401
    assert (
        await client.get(f"/v2/requests/{uuid.uuid4()}/webhooks", headers=tenant.headers)
    ).status_code == 404
    await run_worker()
    assert len(receiver.received(HOOK)) == 1


async def test_failed_and_canceled_requests_get_their_completed_webhook(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    image_server: ImageServer,
) -> None:
    failed_id = await submit(
        client,
        tenant,
        body(subject_image=image_server.url("/missing"), webhook_url=receiver.url("/failed")),
    )
    canceled_id = await submit(client, tenant, body(webhook_url=receiver.url("/canceled")))
    await cancel(client, tenant, canceled_id)
    await run_worker()

    secret = await webhook_secret(client, tenant)
    [failed] = receiver.received("/failed")
    payload = verify(secret, failed)
    assert payload["event"] == "completed"
    assert payload["request_id"] == failed_id
    assert payload["status"] == "FAILED"
    assert payload["error_code"] == (await get_record(client, tenant, failed_id))["error_code"]
    assert "404" in payload["error"]
    assert payload["outputs"] == []

    [canceled] = receiver.received("/canceled")
    payload = verify(secret, canceled)
    assert payload["event"] == "completed"
    assert payload["request_id"] == canceled_id
    assert payload["status"] == "CANCELED"
    assert (await only_delivery(client, tenant, canceled_id))["status"] == "delivered"


# --- must show 2: retries, 410, redirects, timeouts, Retry-After, redelivery ----------------


async def test_500_500_200_is_three_attempts_with_one_webhook_id(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    receiver.script(HOOK, [Reply(500, body=b"oops"), Reply(500), Reply(200)])
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()

    received = receiver.received(HOOK)
    assert len(received) == 3
    assert len({r.webhook_id for r in received}) == 1
    secret = await webhook_secret(client, tenant)
    for request in received:
        verify(secret, request)  # each attempt is signed afresh (new timestamp)

    delivery = await only_delivery(client, tenant, request_id)
    assert delivery["webhook_id"] == received[0].webhook_id
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 3
    assert delivery["last_status_code"] == 200
    assert delivery["delivered_at"] is not None
    assert delivery["next_attempt_at"] is None
    log = delivery["attempt_log"]
    assert [a["number"] for a in log] == [1, 2, 3]
    assert [a["status_code"] for a in log] == [500, 500, 200]
    started = [datetime.fromisoformat(a["started_at"]) for a in log]
    assert started == sorted(started)


async def test_410_stops_after_one_attempt(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    settings: Settings,
    sessionmaker: Sessions,
    redis: ArqRedis,
) -> None:
    receiver.script(HOOK, [Reply(410)])
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()

    assert len(receiver.received(HOOK)) == 1
    delivery = await only_delivery(client, tenant, request_id)
    assert delivery["status"] == "stopped"
    assert delivery["attempts"] == 1
    assert delivery["last_status_code"] == 410
    assert delivery["next_attempt_at"] is None
    # Not due for anything: the sweeper queues nothing and nothing more arrives.
    ctx = sweeper_ctx(sessionmaker, settings, redis)
    assert await sweep_webhooks(ctx) == 0
    await run_worker()
    assert len(receiver.received(HOOK)) == 1


async def test_redirect_is_not_followed_and_is_retried_until_failed(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    moved = Reply(302, headers={"Location": receiver.url("/elsewhere")})
    receiver.script(HOOK, [moved] * 4)
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()

    assert receiver.received("/elsewhere") == []
    received = receiver.received(HOOK)
    assert len(received) == 4  # the first attempt and the 3 retries of the schedule
    assert len({r.webhook_id for r in received}) == 1
    gaps = [b.arrived_at - a.arrived_at for a, b in itertools.pairwise(received)]
    assert all(gap >= 0.04 for gap in gaps), gaps  # 0.05 s ± 10 %

    delivery = await only_delivery(client, tenant, request_id)
    assert delivery["status"] == "failed"
    assert delivery["attempts"] == 4
    assert [a["status_code"] for a in delivery["attempt_log"]] == [302] * 4
    assert all("redirect" in a["error"] for a in delivery["attempt_log"])


async def test_receiver_that_hangs_is_cut_off_and_retried(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    settings: Settings,
) -> None:
    # It would answer after half a minute: a retry (or a cut-off attempt) sooner than that was
    # not waiting for the answer, which no loaded machine turns into one that did.
    answers_after_s = 30.0
    receiver.script(HOOK, [Reply(200, delay_s=answers_after_s)])
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()

    received = receiver.received(HOOK)
    assert len(received) == 2
    assert received[0].webhook_id == received[1].webhook_id
    assert received[1].arrived_at - received[0].arrived_at < answers_after_s

    delivery = await only_delivery(client, tenant, request_id)
    assert delivery["status"] == "delivered"
    hung, answered = delivery["attempt_log"]
    assert hung["status_code"] is None
    assert f"{settings.webhook_timeout_s:g} s" in hung["error"]
    assert "no answer" in hung["error"]
    timeout_ms = settings.webhook_timeout_s * 1000
    assert timeout_ms * 0.95 <= hung["duration_ms"] < answers_after_s * 1000
    assert answered["status_code"] == 200
    assert answered["error"] is None


async def test_retry_after_is_honoured(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    receiver.script(HOOK, [Reply(503, headers={"Retry-After": "1"})])
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()

    first, second = receiver.received(HOOK)
    # The schedule says 0.05 s; the receiver asked for 1 s.
    assert second.arrived_at - first.arrived_at >= 0.95
    # ...and no more than that, give or take a loaded machine (the schedule's next steps, and
    # any cap on Retry-After, are far apart from 1 s too).
    assert second.arrived_at - first.arrived_at < 20
    delivery = await only_delivery(client, tenant, request_id)
    assert [a["status_code"] for a in delivery["attempt_log"]] == [503, 200]
    assert delivery["status"] == "delivered"


async def test_redeliver_sends_again_with_the_same_webhook_id(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()
    [first] = receiver.received(HOOK)

    response = await redeliver(client, tenant, request_id)
    assert response.status_code == 202, response.text
    [listed] = response.json()["data"]
    assert listed["status"] == "pending"
    await run_worker()

    first_again, second = receiver.received(HOOK)
    assert first_again == first
    assert second.webhook_id == first.webhook_id
    secret = await webhook_secret(client, tenant)
    assert verify(secret, second)["event"] == "completed"
    delivery = await only_delivery(client, tenant, request_id)
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempt_log"]] == [200, 200]


async def test_redeliver_after_failure_starts_a_new_round_of_attempts(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    """`redeliver` is "a new round of attempts" (relight.webhooks.service.redeliver): once the
    receiver is fixed, one more blip must not end the new round at its first attempt."""
    receiver.script(HOOK, [Reply(500)] * 4)
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()
    assert (await only_delivery(client, tenant, request_id))["status"] == "failed"
    assert len(receiver.received(HOOK)) == 4

    receiver.script(HOOK, [Reply(503)])  # back, but not quite yet
    response = await redeliver(client, tenant, request_id)
    assert response.status_code == 202, response.text
    await run_worker()

    delivery = await only_delivery(client, tenant, request_id)
    codes = [a["status_code"] for a in delivery["attempt_log"]]
    assert delivery["status"] == "delivered", f"the new round ended after {codes[4:]}"
    assert codes == [500, 500, 500, 500, 503, 200]


async def test_redeliver_refuses_unfinished_requests_and_requests_without_webhook(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    queued_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    response = await redeliver(client, tenant, queued_id)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "not_finished"

    plain_id = await submit(client, tenant, body())
    await run_worker()
    response = await redeliver(client, tenant, plain_id)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "no_webhook"
    assert await deliveries(client, tenant, plain_id) == []
    # Only the queued one's event arrived, once it ran: one message (one webhook-id), which a
    # slow receiver on a loaded machine may see twice (at-least-once: the 1.5 s timeout retries).
    received = receiver.received(HOOK)
    assert {json.loads(hit.body)["request_id"] for hit in received} == {queued_id}
    assert len({hit.webhook_id for hit in received}) == 1


# --- must show 4: secret rotation -----------------------------------------------------------


async def test_rotation_overlap_signs_with_both_secrets(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    engine: AsyncEngine,
) -> None:
    old = await webhook_secret(client, tenant)
    rotated = await client.post("/v2/webhooks/secret/rotate", headers=tenant.headers)
    assert rotated.status_code == 200, rotated.text
    new: str = rotated.json()["secret"]
    assert new != old

    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()
    [request] = receiver.received(HOOK)

    signatures = request.signatures
    assert len(signatures) == 2
    assert all(signature.startswith("v1,") for signature in signatures)
    assert verify(new, request)["request_id"] == request_id
    assert verify(old, request)["request_id"] == request_id
    # Each signature is one secret's: each verifies with exactly one of them.
    for secret in (new, old):
        matching = []
        for signature in signatures:
            alone = replace(request, headers={**request.headers, "webhook-signature": signature})
            with contextlib.suppress(WebhookVerificationError):
                verify(secret, alone)
                matching.append(signature)
        assert len(matching) == 1, secret
    # A secret that was never issued verifies neither.
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(
            request.body, request.headers
        )

    # Once the overlap is over, only the new secret signs.
    await expire_retired_secret(engine, tenant, old)
    response = await redeliver(client, tenant, request_id)
    assert response.status_code == 202, response.text
    await run_worker()
    _, after = receiver.received(HOOK)
    assert len(after.signatures) == 1
    verify(new, after)
    with pytest.raises(WebhookVerificationError):
        verify(old, after)


async def expire_retired_secret(engine: AsyncEngine, tenant: TenantKey, secret: str) -> None:
    """Move the expiry of the rotated-out `secret` into the past (its overlap is over)."""
    async with engine.begin() as connection:
        changed = await connection.execute(
            text(
                """
                update tenant set webhook_retired_secrets = (
                    select jsonb_agg(case when retired ->> 'secret' = :secret
                        then jsonb_set(retired, '{expires_at}', to_jsonb(now() - interval '1 s'))
                        else retired end order by position)
                    from jsonb_array_elements(webhook_retired_secrets)
                        with ordinality as entries(retired, position))
                where id = :id and webhook_retired_secrets @> jsonb_build_array(
                    jsonb_build_object('secret', cast(:secret as text)))
                """
            ),
            {"id": tenant.tenant_id, "secret": secret},
        )
        assert changed.rowcount == 1


async def rotate_secret(client: httpx.AsyncClient, tenant: TenantKey) -> dict[str, Any]:
    rotated = await client.post("/v2/webhooks/secret/rotate", headers=tenant.headers)
    assert rotated.status_code == 200, rotated.text
    view: dict[str, Any] = rotated.json()
    return view


def verifying_secrets(request: Received, secrets: list[str]) -> list[str]:
    """Those of `secrets` that the official verifier accepts the request with."""
    accepted = []
    for secret in secrets:
        with contextlib.suppress(WebhookVerificationError):
            verify(secret, request)
            accepted.append(secret)
    return accepted


async def test_two_rotations_within_the_overlap_sign_with_all_three_secrets_until_each_expires(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    engine: AsyncEngine,
) -> None:
    first = await webhook_secret(client, tenant)
    second = (await rotate_secret(client, tenant))["secret"]
    rotated = await rotate_secret(client, tenant)
    third = rotated["secret"]
    assert len({first, second, third}) == 3
    # Each rotated-out secret has its own expiry, newest first.
    second_expires, first_expires = rotated["retired_secrets_expire_at"]
    assert first_expires < second_expires == rotated["previous_secret_expires_at"]

    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()
    [request] = receiver.received(HOOK)
    assert len(request.signatures) == 3
    assert verifying_secrets(request, [first, second, third]) == [first, second, third]
    for signature in request.signatures:
        alone = replace(request, headers={**request.headers, "webhook-signature": signature})
        assert len(verifying_secrets(alone, [first, second, third])) == 1

    # The first secret's overlap ends: the second still signs, beside the current one.
    await expire_retired_secret(engine, tenant, first)
    assert (await redeliver(client, tenant, request_id)).status_code == 202
    await run_worker()
    _, after_first = receiver.received(HOOK)
    assert len(after_first.signatures) == 2
    assert verifying_secrets(after_first, [first, second, third]) == [second, third]

    # Then the second's: only the current secret signs.
    await expire_retired_secret(engine, tenant, second)
    assert (await redeliver(client, tenant, request_id)).status_code == 202
    await run_worker()
    *_, after_second = receiver.received(HOOK)
    assert len(after_second.signatures) == 1
    assert verifying_secrets(after_second, [first, second, third]) == [third]
    view = await client.get("/v2/webhooks/secret", headers=tenant.headers)
    assert view.json()["retired_secrets_expire_at"] == []
    assert view.json()["previous_secret_expires_at"] is None


async def test_at_most_five_rotated_out_secrets_keep_signing(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, receiver: WebhookReceiver
) -> None:
    secrets = [await webhook_secret(client, tenant)]
    for _ in range(7):
        secrets.append((await rotate_secret(client, tenant))["secret"])

    await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await run_worker()
    [request] = receiver.received(HOOK)
    # The current secret and the five newest rotated-out ones; the two oldest retired early.
    assert len(request.signatures) == 6
    assert verifying_secrets(request, secrets) == secrets[2:]


# --- must show 5: rows are the source of truth ----------------------------------------------


async def test_restarted_worker_delivers_what_was_committed_but_never_queued(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lost: list[uuid.UUID] = []

    async def crash_before_queueing(
        enqueuer: object, queue_name: str, delivery_id: uuid.UUID, attempt: int
    ) -> None:
        lost.append(delivery_id)  # the process is gone before it reaches Redis

    with monkeypatch.context() as patch:
        patch.setattr("relight.jobs.lifecycle.enqueue_delivery", crash_before_queueing)
        request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
        await run_worker()

    assert (await get_record(client, tenant, request_id))["status"] == "COMPLETED"
    assert len(lost) == 1
    assert receiver.received(HOOK) == []
    delivery = await only_delivery(client, tenant, request_id)
    assert delivery["status"] == "pending"
    assert delivery["attempts"] == 0

    # A fresh worker (not burst: it has the sweeper, which runs at startup) sends it.
    worker = build_worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        [request] = await receiver.wait_for(HOOK, 1, timeout_s=10)
        for _ in range(200):  # until the worker has recorded the attempt
            delivery = await only_delivery(client, tenant, request_id)
            if delivery["status"] != "pending":
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
    assert request.webhook_id == f"msg_{lost[0].hex}"
    assert verify(await webhook_secret(client, tenant), request)["status"] == "COMPLETED"
    delivery = await only_delivery(client, tenant, request_id)
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 1


async def test_delivery_lost_by_redis_is_sent_by_the_sweeper(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    settings: Settings,
    sessionmaker: Sessions,
    redis: ArqRedis,
    engine: AsyncEngine,
) -> None:
    # Canceling commits the delivery row and queues it …
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await cancel(client, tenant, request_id)
    [delivery_id] = await delivery_ids(engine)
    assert await redis.exists(f"arq:job:webhook:{delivery_id}:1")
    # … then Redis loses it all before a worker runs.
    await forget_queue(redis, settings, engine)
    await run_worker()
    assert receiver.received(HOOK) == []

    ctx = sweeper_ctx(sessionmaker, settings, redis)
    assert await sweep_webhooks(ctx) == 1
    await run_worker()
    [request] = receiver.received(HOOK)
    assert request.webhook_id == f"msg_{delivery_id.hex}"
    assert verify(await webhook_secret(client, tenant), request)["status"] == "CANCELED"
    assert (await only_delivery(client, tenant, request_id))["status"] == "delivered"
    assert await sweep_webhooks(ctx) == 0


async def test_sweeper_requeues_a_delivery_whose_queue_entry_was_lost(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    settings: Settings,
    sessionmaker: Sessions,
    redis: ArqRedis,
) -> None:
    """The queue is flushed but arq's job key (`arq:job:webhook:<id>:1`, kept ~1 day) is not:
    the sweeper must still get the delivery sent, not count it as queued while arq refuses it."""
    request_id = await submit(client, tenant, body(webhook_url=receiver.url(HOOK)))
    await cancel(client, tenant, request_id)
    await delete_run_keys(redis, settings)  # this run's queue keys only

    ctx = sweeper_ctx(sessionmaker, settings, redis)
    assert await sweep_webhooks(ctx) == 1
    await run_worker()
    assert len(receiver.received(HOOK)) == 1, "the sweeper's enqueue was refused by arq"
    assert (await only_delivery(client, tenant, request_id))["status"] == "delivered"


async def test_attempt_cut_short_by_a_crash_is_sent_again_after_its_lease(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    settings: Settings,
    sessionmaker: Sessions,
    redis: ArqRedis,
    engine: AsyncEngine,
) -> None:
    request_id, delivery_id = await canceled_and_unqueued(
        client, tenant, receiver, redis, settings, engine
    )
    # A worker claims attempt 1 and dies before sending it.
    async with sessionmaker() as session, session.begin():
        claimed = await claim_attempt(session, delivery_id, settings.webhook_timeout_s + 30)
    assert claimed is not None
    assert claimed.attempts == 1

    ctx = sweeper_ctx(sessionmaker, settings, redis)
    assert await sweep_webhooks(ctx) == 0  # its lease still holds it
    async with engine.begin() as connection:
        await connection.execute(
            text("update webhook_delivery set next_attempt_at = now() - interval '1 s'")
        )
    assert await sweep_webhooks(ctx) == 1  # the lease is over
    await run_worker()

    [request] = receiver.received(HOOK)
    assert request.webhook_id == f"msg_{delivery_id.hex}"
    delivery = await only_delivery(client, tenant, request_id)
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 2
    assert [a["number"] for a in delivery["attempt_log"]] == [2]


async def test_delivery_that_redis_refused_to_queue_is_sent_by_the_sweeper(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    settings: Settings,
    sessionmaker: Sessions,
    redis: ArqRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refused: list[uuid.UUID] = []

    async def redis_down(
        enqueuer: object, queue_name: str, delivery_id: uuid.UUID, attempt: int
    ) -> None:
        refused.append(delivery_id)
        raise RedisError("Connection refused")

    with monkeypatch.context() as patch:
        # The worker finishing a job, and the API canceling one, both meet a Redis outage (both
        # queue their deliveries through `lifecycle.announce`).
        patch.setattr("relight.jobs.lifecycle.enqueue_delivery", redis_down)
        done_id = await submit(client, tenant, body(webhook_url=receiver.url("/done")))
        await run_worker()
        canceled_id = await submit(client, tenant, body(webhook_url=receiver.url("/canceled")))
        await cancel(client, tenant, canceled_id)

    assert len(refused) == 2
    # The outage did not fail the request.
    assert (await get_record(client, tenant, done_id))["status"] == "COMPLETED"
    assert receiver.received() == []

    ctx = sweeper_ctx(sessionmaker, settings, redis)
    assert await sweep_webhooks(ctx) == 2
    await run_worker()
    secret = await webhook_secret(client, tenant)
    [done] = receiver.received("/done")
    [canceled] = receiver.received("/canceled")
    assert verify(secret, done)["status"] == "COMPLETED"
    assert verify(secret, canceled)["status"] == "CANCELED"
    for request_id in (done_id, canceled_id):
        delivery = await only_delivery(client, tenant, request_id)
        assert delivery["status"] == "delivered"
        assert delivery["attempts"] == 1


async def test_duplicate_runs_of_one_attempt_send_once(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    receiver: WebhookReceiver,
    settings: Settings,
    sessionmaker: Sessions,
    redis: ArqRedis,
    engine: AsyncEngine,
) -> None:
    request_id, delivery_id = await canceled_and_unqueued(
        client, tenant, receiver, redis, settings, engine
    )

    async with httpx.AsyncClient() as http:
        sender = WebhookSender(
            settings=settings,
            sessionmaker=sessionmaker,
            http=http,
            urls=UrlBuilder(
                base_url="http://relight.test",
                secret_key=settings.secret_key,
                output_url_ttl_s=settings.output_url_ttl_s,
            ),
        )
        ctx = {"webhooks": sender, "settings": settings, "redis": redis}
        # arq delivers at least once: the same attempt run twice at the same moment …
        results = list(
            await asyncio.gather(
                deliver_webhook(ctx, str(delivery_id)), deliver_webhook(ctx, str(delivery_id))
            )
        )
        # … and once more later.
        results.append(await deliver_webhook(ctx, str(delivery_id)))

    assert results == ["done", "done", "done"]
    assert len(receiver.received(HOOK)) == 1
    delivery = await only_delivery(client, tenant, request_id)
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 1
    assert len(delivery["attempt_log"]) == 1
