"""The v2 request API: listing, status, cancel, idempotency, `Prefer: wait`, outputs, probes."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncEngine

from api.waiting import RECHECK_S
from relight.core.config import Settings
from relight.core.storage.urls import sign_output
from tests.conftest import MakeTenant, RunWorker, TenantKey
from tests.fakes.image_server import ImageServer
from tests.helpers import (
    FAST,
    assert_never_ran,
    assert_no_server_errors,
    balance_of,
    cancel,
    get_record,
    get_status,
    job_count,
    local_path,
    submit,
)
from tests.helpers import small_body as body

START_BALANCE = 1000


@pytest.fixture(autouse=True)
def no_server_errors(client: httpx.AsyncClient) -> Iterator[None]:
    """No answer in these tests may be a 5xx."""
    with assert_no_server_errors(client):
        yield


# --- listing ---------------------------------------------------------------------------------


async def test_listing_pages_newest_first_until_the_cursor_runs_out(
    client: httpx.AsyncClient, tenant: TenantKey, make_tenant: MakeTenant
) -> None:
    submitted = [await submit(client, tenant, body(f"cat number {n}")) for n in range(5)]

    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get("/v2/requests", headers=tenant.headers, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= 2
        pages.append([item["request_id"] for item in page["data"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10, "the cursor never ran out"

    assert [len(page) for page in pages] == [2, 2, 1]
    seen = [request_id for page in pages for request_id in page]
    assert seen == list(reversed(submitted))
    # The records carry what was asked.
    first_page = (
        await client.get("/v2/requests", headers=tenant.headers, params={"limit": 2})
    ).json()
    assert [item["params"]["prompt"] for item in first_page["data"]] == [
        "cat number 4",
        "cat number 3",
    ]
    assert all(item["status"] == "QUEUED" for item in first_page["data"])

    other = await make_tenant("other")
    theirs = await client.get("/v2/requests", headers=other.headers)
    assert theirs.status_code == 200
    assert theirs.json() == {"data": [], "next_cursor": None}


def instant_of(request_id: str) -> datetime:
    """The instant a UUIDv7 request id encodes: its milliseconds and their fraction."""
    value = uuid.UUID(request_id).int
    millis, fraction = value >> 80, (value >> 64) & 0xFFF
    return datetime.fromtimestamp(0, UTC) + timedelta(microseconds=millis * 1000 + fraction / 4.096)


async def test_concurrent_submits_list_newest_first_by_created_at_too(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    """The list is in id order (the id is the cursor); `created_at` is the instant the id
    encodes, so it is newest first by `created_at` as well, even for submits that raced.
    (Failed before: `created_at` was Postgres' transaction start, taken after the id and in
    another order under concurrency; a client that checked the order saw it break.)"""
    await asyncio.gather(*(submit(client, tenant, body(f"cat {n}")) for n in range(8)))

    listed = (await client.get("/v2/requests", headers=tenant.headers)).json()["data"]

    created = [datetime.fromisoformat(item["created_at"]) for item in listed]
    assert created == sorted(created, reverse=True)
    for item, at in zip(listed, created, strict=True):
        assert abs(instant_of(item["request_id"]) - at) < timedelta(microseconds=1)


async def test_listing_filters_by_status(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    first, second, third = [await submit(client, tenant, body()) for _ in range(3)]
    await cancel(client, tenant, second)

    queued = await client.get("/v2/requests", headers=tenant.headers, params={"status": "QUEUED"})
    assert [item["request_id"] for item in queued.json()["data"]] == [third, first]
    only_canceled = await client.get(
        "/v2/requests", headers=tenant.headers, params={"status": "CANCELED"}
    )
    assert [item["request_id"] for item in only_canceled.json()["data"]] == [second]
    none_done = await client.get(
        "/v2/requests", headers=tenant.headers, params={"status": "COMPLETED"}
    )
    assert none_done.json()["data"] == []

    unknown = await client.get("/v2/requests", headers=tenant.headers, params={"status": "DONE"})
    assert unknown.status_code == 422
    assert unknown.json()["field"] == "status"


async def test_listing_refuses_a_bad_cursor_or_limit(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    bad: list[tuple[dict[str, str | int], str]] = [
        ({"cursor": "page-2"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "all"}, "limit"),
    ]
    for params, field in bad:
        response = await client.get("/v2/requests", headers=tenant.headers, params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["field"] == field


# --- status ----------------------------------------------------------------------------------


async def test_status_shows_the_queue_position(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    ids = [await submit(client, tenant, body()) for _ in range(3)]

    for position, request_id in enumerate(ids):
        response = await client.get(f"/v2/requests/{request_id}/status", headers=tenant.headers)
        assert response.status_code == 200, response.text
        status = response.json()
        assert status["request_id"] == request_id
        assert status["status"] == "QUEUED"
        assert status["queue_position"] == position

    # When the head of the queue leaves, everyone moves up.
    await client.post(f"/v2/requests/{ids[0]}/cancel", headers=tenant.headers)
    after = await get_status(client, tenant, ids[2])
    assert after["queue_position"] == 1
    gone = await get_status(client, tenant, ids[0])
    assert gone["status"] == "CANCELED"
    assert gone["queue_position"] is None


# --- cancel ----------------------------------------------------------------------------------


async def test_canceling_a_queued_request_refunds_it_and_it_never_runs(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, engine: AsyncEngine
) -> None:
    submitted = await client.post("/v2/ic-light", headers=tenant.headers, json=body())
    assert submitted.status_code == 202, submitted.text
    request_id = submitted.json()["request_id"]
    reserved = submitted.json()["credits_reserved"]
    assert reserved == 10
    assert await balance_of(engine, tenant.tenant_id) == START_BALANCE - reserved

    canceled = await cancel(client, tenant, request_id)

    assert canceled["status"] == "CANCELED"
    assert canceled["credits"]["charged"] == 0
    assert await balance_of(engine, tenant.tenant_id) == START_BALANCE

    again = await cancel(client, tenant, request_id)
    assert again["status"] == "CANCELED"
    assert await balance_of(engine, tenant.tenant_id) == START_BALANCE  # refunded once

    await run_worker()

    assert_never_ran(await get_record(client, tenant, request_id))
    assert await balance_of(engine, tenant.tenant_id) == START_BALANCE


async def test_canceling_a_completed_request_is_a_409(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker, engine: AsyncEngine
) -> None:
    request_id = await submit(client, tenant, body(**FAST))
    await run_worker()
    record = await get_record(client, tenant, request_id)
    assert record["status"] == "COMPLETED"
    charged = record["credits"]["charged"]
    assert charged > 0

    response = await client.post(f"/v2/requests/{request_id}/cancel", headers=tenant.headers)

    assert response.status_code == 409, response.text
    assert response.json()["code"] == "not_cancelable"
    assert "COMPLETED" in response.json()["error"]
    assert (await get_record(client, tenant, request_id))["status"] == "COMPLETED"
    assert await balance_of(engine, tenant.tenant_id) == START_BALANCE - charged


# --- idempotency -----------------------------------------------------------------------------


async def test_the_same_idempotency_key_and_body_replay_the_request(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine
) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "order-1234"}

    first = await client.post("/v2/ic-light", headers=headers, json=body())
    second = await client.post("/v2/ic-light", headers=headers, json=body())

    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    assert second.status_code == 202, second.text
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json()["request_id"] == first.json()["request_id"]
    assert await job_count(engine) == 1
    assert await balance_of(engine, tenant.tenant_id) == START_BALANCE - 10

    different = await client.post("/v2/ic-light", headers=headers, json=body(steps=30))
    assert different.status_code == 422, different.text
    assert different.json()["code"] == "idempotency_key_reused"
    assert await job_count(engine) == 1
    assert await balance_of(engine, tenant.tenant_id) == START_BALANCE - 10

    # Another key is another request.
    other = await client.post(
        "/v2/ic-light", headers={**tenant.headers, "Idempotency-Key": "order-1235"}, json=body()
    )
    assert other.status_code == 202
    assert other.json()["request_id"] != first.json()["request_id"]


async def test_idempotency_keys_belong_to_one_tenant(
    client: httpx.AsyncClient, tenant: TenantKey, make_tenant: MakeTenant
) -> None:
    other = await make_tenant("other")

    mine = await client.post(
        "/v2/ic-light", headers={**tenant.headers, "Idempotency-Key": "shared"}, json=body()
    )
    theirs = await client.post(
        "/v2/ic-light", headers={**other.headers, "Idempotency-Key": "shared"}, json=body()
    )

    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["request_id"] != theirs.json()["request_id"]
    assert "idempotent-replayed" not in theirs.headers


async def test_concurrent_submits_with_one_idempotency_key_make_one_request(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine
) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "burst-42"}

    responses = await asyncio.gather(
        *(client.post("/v2/ic-light", headers=headers, json=body()) for _ in range(10))
    )

    assert [r.status_code for r in responses] == [202] * 10, [r.text for r in responses]
    assert len({r.json()["request_id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 9
    assert await job_count(engine) == 1
    assert await balance_of(engine, tenant.tenant_id) == START_BALANCE - 10


async def test_concurrent_submits_by_url_with_one_idempotency_key_make_one_request(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine, image_server: ImageServer
) -> None:
    # A URL subject: the reservation runs in autocommit, on the driver's connection, so the
    # losers of the race meet the taken key there.
    headers = {**tenant.headers, "Idempotency-Key": "burst-url-42"}
    by_url = body(subject_image=image_server.url("/cat.png"))

    responses = await asyncio.gather(
        *(client.post("/v2/ic-light", headers=headers, json=by_url) for _ in range(10))
    )

    assert [r.status_code for r in responses] == [202] * 10, [r.text for r in responses]
    assert len({r.json()["request_id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 9
    assert await job_count(engine) == 1
    assert await balance_of(engine, tenant.tenant_id) == START_BALANCE - 10


# --- Prefer: wait ----------------------------------------------------------------------------


async def test_prefer_wait_answers_the_finished_record(
    client: httpx.AsyncClient, tenant: TenantKey, background_worker: None
) -> None:
    response = await client.post(
        "/v2/ic-light",
        headers={**tenant.headers, "Prefer": "wait=20"},
        json=body(**FAST, seed=7),
    )

    assert response.status_code == 200, response.text
    assert response.headers["Preference-Applied"] == "wait=20"
    record = response.json()
    assert record["status"] == "COMPLETED"
    assert record["params"]["seed"] == 7
    assert record["credits"]["charged"] == record["credits"]["reserved"]
    [output] = record["outputs"]
    assert (output["width"], output["height"], output["content_type"]) == (256, 256, "image/png")
    # The same record that GET answers (output URLs, in `outputs` and Segmind's `output`, are
    # signed afresh on each read, so their expiry may have moved on by a second).
    stored = await get_record(client, tenant, record["request_id"])
    unsigned = {"outputs": None, "output": None}
    assert {**stored, **unsigned} == {**record, **unsigned}
    assert str(stored["output"]).split("?")[0] == str(record["output"]).split("?")[0]


async def test_prefer_wait_without_a_worker_answers_202_when_the_wait_runs_out(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    started = time.monotonic()
    response = await client.post(
        "/v2/ic-light", headers={**tenant.headers, "Prefer": "wait=1"}, json=body()
    )
    elapsed = time.monotonic() - started

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "QUEUED"
    # The wait ran out (1 s), and nothing longer held the answer (the sync timeout is 20 s here).
    assert 0.9 <= elapsed < 15, elapsed
    status = await client.get(response.json()["status_url"], headers=tenant.headers)
    assert status.json()["status"] == "QUEUED"


async def test_canceling_a_queued_request_wakes_its_prefer_wait_and_v1_waiters_at_once(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    # No worker: the request stays queued until it is canceled. A v2 submit with `Prefer: wait`
    # and a synchronous v1 submit of the same request (one Idempotency-Key) both wait on it.
    headers = {**tenant.headers, "Idempotency-Key": "waited-on-twice"}
    waited = body("waited on twice")
    answers: dict[str, tuple[httpx.Response, float]] = {}

    async def wait_on(name: str, url: str, extra: dict[str, str]) -> None:
        response = await client.post(url, headers={**headers, **extra}, json=waited)
        answers[name] = (response, time.monotonic())

    # Each waiter re-reads the row RECHECK_S after its first read, which comes after this
    # instant: an answer within RECHECK_S of it cannot be a re-check's.
    before_first_reads = time.monotonic()
    v2 = asyncio.create_task(wait_on("v2", "/v2/ic-light", {"Prefer": "wait=60"}))
    request_id = await _only_queued_request(client, tenant)
    v1 = asyncio.create_task(wait_on("v1", "/v1/ic-light", {}))
    # Both waiters are past their first read of the row, waiting for its end.
    await asyncio.sleep(0.5)
    assert not answers, answers

    canceled = await cancel(client, tenant, request_id)
    await asyncio.wait_for(asyncio.gather(v2, v1), timeout=2 * RECHECK_S)

    # Woken by the cancel's announcement, not by their periodic re-check of the row.
    for name, (_, answered_at) in answers.items():
        answered_after = answered_at - before_first_reads
        assert answered_after < RECHECK_S, (name, answered_after)
    waited_v2, _ = answers["v2"]
    assert waited_v2.status_code == 200, waited_v2.text
    assert waited_v2.headers["Preference-Applied"] == "wait=60"
    assert waited_v2.json() == canceled
    assert canceled["status"] == "CANCELED"
    assert canceled["credits"]["charged"] == 0
    waited_v1, _ = answers["v1"]
    assert waited_v1.status_code == 409, waited_v1.text
    assert (waited_v1.json()["code"], waited_v1.json()["request_id"]) == ("canceled", request_id)


async def _only_queued_request(client: httpx.AsyncClient, tenant: TenantKey) -> str:
    """The id of the tenant's one request, once its submit committed it."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        listed = await client.get("/v2/requests", headers=tenant.headers)
        if data := listed.json()["data"]:
            [record] = data
            assert record["status"] == "QUEUED"
            request_id: str = record["request_id"]
            return request_id
        await asyncio.sleep(0.02)
    raise AssertionError("the submit never committed its request")


# --- outputs ---------------------------------------------------------------------------------


async def test_outputs_download_with_the_key_or_the_signed_url(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    make_tenant: MakeTenant,
    run_worker: RunWorker,
    settings: Settings,
) -> None:
    request_id = await submit(client, tenant, body(**FAST, number_of_images=2))
    await run_worker()
    record = await get_record(client, tenant, request_id)
    assert record["status"] == "COMPLETED"
    assert [output["index"] for output in record["outputs"]] == [0, 1]

    for output in record["outputs"]:
        index = output["index"]
        with_key = await client.get(
            f"/v2/requests/{request_id}/outputs/{index}", headers=tenant.headers
        )
        assert with_key.status_code == 200, with_key.text
        assert with_key.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(with_key.content)).size == (256, 256)

        signed = await client.get(local_path(output["url"]))  # no API key
        assert signed.status_code == 200, signed.text
        assert signed.content == with_key.content
        assert len(signed.content) == output["bytes"]

    # The signed URL of output 0 does not open output 1.
    url = urlsplit(record["outputs"][0]["url"])
    query = parse_qs(url.query)
    expires, signature = query["expires"][0], query["signature"][0]
    swapped = await client.get(
        f"/v2/requests/{request_id}/outputs/1",
        params={"expires": expires, "signature": signature},
    )
    assert swapped.status_code == 401

    tampered_signature = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    tampered = await client.get(
        url.path, params={"expires": expires, "signature": tampered_signature}
    )
    assert tampered.status_code == 401, tampered.text
    assert tampered.json()["code"] == "invalid_signature"

    later = await client.get(
        url.path, params={"expires": int(expires) + 3600, "signature": signature}
    )
    assert later.status_code == 401

    past_expires, past_signature = sign_output(
        settings.secret_key, uuid.UUID(request_id), 0, ttl_s=-60
    )
    expired = await client.get(
        url.path, params={"expires": past_expires, "signature": past_signature}
    )
    assert expired.status_code == 401, expired.text
    assert expired.json()["code"] == "invalid_signature"

    missing = await client.get(f"/v2/requests/{request_id}/outputs/5", headers=tenant.headers)
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"

    other = await make_tenant("other")
    stranger = await client.get(f"/v2/requests/{request_id}/outputs/0", headers=other.headers)
    assert stranger.status_code == 404

    anonymous = await client.get(f"/v2/requests/{request_id}/outputs/0")
    assert anonymous.status_code == 401


def references(node: Any) -> list[str]:
    """Every `$ref` value anywhere in a JSON document."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in references(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in references(item)]
    return []


# --- probes and schema -----------------------------------------------------------------------


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}

    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}


async def test_openapi_lists_the_public_paths(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")

    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "Relight"
    paths = schema["paths"]
    for path, method in [
        ("/v1/ic-light", "post"),
        ("/v2/ic-light", "post"),
        ("/v2/requests", "get"),
        ("/v2/requests/{request_id}", "get"),
        ("/v2/requests/{request_id}/status", "get"),
        ("/v2/requests/{request_id}/cancel", "post"),
        ("/v2/requests/{request_id}/outputs/{index}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} is not documented"
    submit_body = paths["/v2/ic-light"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(submit_body)
    # Every reference resolves, so Swagger UI and client generators can read the document.
    defined = set(schema["components"]["schemas"])
    dangling = sorted(
        {
            ref
            for ref in references(schema)
            if ref.removeprefix("#/components/schemas/") not in defined
        }
    )
    assert dangling == [], f"unresolvable $ref in /openapi.json: {dangling}"
    fields = schema["components"]["schemas"]["SubmitBody"]["properties"]
    assert {"prompt", "subject_image", "cfg", "light_source", "number_of_images"} <= set(fields)
