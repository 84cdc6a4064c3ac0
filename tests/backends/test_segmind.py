"""The `segmind` backend against a stand-in Segmind server (tests/fakes/segmind.py).

What Segmind receives (its own parameter names and values, one image per call, the subject as
URL, base64 or a signed URL to our copy), how each upstream answer ends a job (state, error
code, attempts, one charge or one refund, the calls on the record), Retry-After, and the checks
at submit.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.core.image_metadata import strip_metadata
from relight.tenants.service import find_tenant, set_allowed_backends
from tests.api.test_seed_example import seed_example
from tests.conftest import MakeTenant, TenantKey, example_base64, example_bytes
from tests.fakes.image_server import ImageServer
from tests.fakes.segmind import (
    SEGMIND_PARAMETERS,
    TEST_SERVER,
    Answer,
    Kind,
    SegmindCall,
    SegmindStandIn,
    background_worker,
    fetch_over_http,
    relight_client,
    run_burst_worker,
    segmind_settings,
    validate_body,
)
from tests.helpers import balance_of, get_record, local_path

START = 1000
PRICE = 10  # the seed example: one 768×960 image at 25 steps
# A small render, where the size does not matter.
SMALL: dict[str, Any] = {"width": 256, "height": 320, "highres_scale": 1.0}


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def stand_in() -> Iterator[SegmindStandIn]:
    with SegmindStandIn() as server:
        yield server


@pytest.fixture
def segmind(settings: Settings, stand_in: SegmindStandIn) -> Settings:
    """The test settings with the segmind backend pointed at the stand-in."""
    return segmind_settings(settings, stand_in)


@pytest.fixture
async def sclient(segmind: Settings, clean_state: None) -> AsyncIterator[httpx.AsyncClient]:
    """An API client for the segmind settings."""
    async with relight_client(segmind) as client:
        yield client


def body(subject_image: str, /, **overrides: Any) -> dict[str, Any]:
    """The seed example on `subject_image`, sent to the segmind backend explicitly."""
    return {**seed_example(subject_image), "backend": "segmind", **overrides}


async def submit(client: httpx.AsyncClient, tenant: TenantKey, payload: dict[str, Any]) -> str:
    response = await client.post("/v2/ic-light", headers=tenant.headers, json=payload)
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id


async def ledger(engine: AsyncEngine, request_id: str) -> list[tuple[str, int]]:
    """The credit entries of one job, oldest first: (kind, amount)."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("select kind, amount from credit_entry where job_id = :id order by id"),
            {"id": uuid.UUID(request_id)},
        )
        return [(str(kind), int(amount)) for kind, amount in rows]


def call_statuses(record: dict[str, Any]) -> list[list[int | None]]:
    """Per attempt, the HTTP status of each upstream call (None: no answer)."""
    return [
        [call.get("status_code") for call in attempt["calls"]]
        for attempt in record["backend"]["attempts"]
    ]


def only_valid(calls: list[SegmindCall]) -> list[SegmindCall]:
    assert all(call.body is not None and not validate_body(call.body) for call in calls)
    return calls


# --- 1. the seed example through Segmind ---------------------------------------------------------


async def test_seed_example_on_v2_completes_through_segmind(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    image_server: ImageServer,
    stand_in: SegmindStandIn,
    segmind: Settings,
    engine: AsyncEngine,
) -> None:
    tenant = await make_tenant()
    subject = image_server.url("/chelsea.png")
    request_id = await submit(sclient, tenant, body(subject))

    await run_burst_worker(segmind)

    record = await get_record(sclient, tenant, request_id)
    assert record["status"] == "COMPLETED", record["error"]
    assert record["attempts"] == 1
    assert record["backend"]["requested"] == "segmind"
    assert record["backend"]["used"] == "segmind"
    [output] = record["outputs"]
    assert (output["width"], output["height"], output["content_type"]) == (768, 960, "image/webp")
    assert output["seed"] == 42

    # Segmind got exactly its own parameter names and the example's values, once.
    [call] = only_valid(stand_in.calls())
    assert call.headers["x-api-key"] == segmind.segmind_api_key
    assert call.headers["content-type"] == "application/json"
    assert call.body is not None
    assert set(call.body) == SEGMIND_PARAMETERS
    assert call.body == seed_example(subject)
    assert call.body["subject_image"] == subject  # the original URL, not a copy
    assert call.body["number_of_images"] == 1
    for name in ("width", "height", "steps", "seed", "output_quality", "number_of_images"):
        assert type(call.body[name]) is int, name

    # The bytes Segmind answered are the output, untouched.
    assert call.status == 200
    assert output["sha256"] == hashlib.sha256(call.answer).hexdigest()
    download = await sclient.get(local_path(output["url"]))
    assert download.status_code == 200
    assert download.content == call.answer
    image = Image.open(io.BytesIO(download.content))
    assert (image.format, image.size) == ("WEBP", (768, 960))

    # The record shows the call: status 200, latency, and Segmind's remaining credits.
    [attempt] = record["backend"]["attempts"]
    assert (attempt["attempt"], attempt["backend"], attempt["outcome"]) == (1, "segmind", "ok")
    [made] = attempt["calls"]
    assert made["status_code"] == 200
    assert made["outcome"] == "ok"
    assert made["remaining_credits"] == int(stand_in.remaining_credits()) == 999
    assert made["latency_ms"] > 0
    assert "backend_ms" in record["timings"]

    assert record["credits"] == {"reserved": PRICE, "charged": PRICE}
    assert await ledger(engine, request_id) == [("reserve", -PRICE), ("charge", 0)]
    assert await balance_of(engine, tenant.tenant_id) == START - PRICE


async def test_seed_example_on_v1_answers_segminds_image(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    image_server: ImageServer,
    stand_in: SegmindStandIn,
    segmind: Settings,
) -> None:
    tenant = await make_tenant()
    subject = image_server.url("/chelsea.png")
    async with background_worker(segmind):
        response = await sclient.post(
            "/v1/ic-light",
            headers={**tenant.headers, "Content-Type": "application/json"},
            json=body(subject),
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    assert response.headers["x-seed-value"] == "42"
    assert int(response.headers["x-remaining-credits"]) == START - PRICE
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.size) == ("WEBP", (768, 960))

    [call] = only_valid(stand_in.calls())
    assert call.body == seed_example(subject)
    assert response.content == call.answer
    record = await get_record(sclient, tenant, response.headers["x-request-id"])
    assert record["backend"]["used"] == "segmind"


async def test_three_images_are_three_calls_with_consecutive_seeds(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    image_server: ImageServer,
    stand_in: SegmindStandIn,
    segmind: Settings,
    engine: AsyncEngine,
) -> None:
    tenant = await make_tenant()
    subject = image_server.url("/chelsea.png")
    request_id = await submit(sclient, tenant, body(subject, number_of_images=3))

    await run_burst_worker(segmind)

    record = await get_record(sclient, tenant, request_id)
    assert record["status"] == "COMPLETED", record["error"]
    calls = only_valid(stand_in.calls())
    assert sorted(call.seed for call in calls) == [42, 43, 44]
    for call in calls:
        assert call.body is not None
        assert call.body["number_of_images"] == 1
        assert call.body == {**seed_example(subject), "seed": call.seed}
    outputs = record["outputs"]
    assert [output["index"] for output in outputs] == [0, 1, 2]
    assert [output["seed"] for output in outputs] == [42, 43, 44]
    # Each output holds the image of its own seed.
    answered = {call.seed: hashlib.sha256(call.answer).hexdigest() for call in calls}
    assert [output["sha256"] for output in outputs] == [answered[42], answered[43], answered[44]]
    assert call_statuses(record) == [[200, 200, 200]]
    assert record["credits"]["charged"] == record["credits"]["reserved"] == 3 * PRICE
    assert await ledger(engine, request_id) == [("reserve", -3 * PRICE), ("charge", 0)]


@pytest.mark.parametrize(
    "subject",
    [
        pytest.param(example_base64(), id="base64"),
        pytest.param("data:image/png;base64," + example_base64(), id="data-url"),
    ],
)
async def test_an_inline_subject_goes_to_segmind_as_base64(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    stand_in: SegmindStandIn,
    segmind: Settings,
    subject: str,
) -> None:
    tenant = await make_tenant()
    request_id = await submit(sclient, tenant, body(subject, **SMALL))

    await run_burst_worker(segmind)

    record = await get_record(sclient, tenant, request_id)
    assert record["status"] == "COMPLETED", record["error"]
    [call] = only_valid(stand_in.calls())
    assert call.body is not None
    sent = call.body["subject_image"]
    # Our stored copy goes, without its metadata (the pixels are the same bytes of image data).
    assert base64.b64decode(sent) == strip_metadata(example_bytes())


async def test_with_a_public_base_url_segmind_fetches_a_signed_input_url(
    settings: Settings,
    clean_state: None,
    make_tenant: MakeTenant,
    image_server: ImageServer,
    stand_in: SegmindStandIn,
) -> None:
    public = segmind_settings(settings, stand_in, public_base_url=TEST_SERVER)
    tenant = await make_tenant()
    loop = asyncio.get_running_loop()
    async with relight_client(public) as client:

        def fetch_through_the_api(url: str) -> bytes:
            """The stand-in's fetch, from its thread: our URLs through the in-process API."""
            if not url.startswith(f"{TEST_SERVER}/"):
                return fetch_over_http(url)
            future = asyncio.run_coroutine_threadsafe(client.get(local_path(url)), loop)
            response = future.result(timeout=5)
            response.raise_for_status()
            return response.content

        stand_in.fetch_subject = fetch_through_the_api
        inline_id = await submit(client, tenant, body(example_base64(), **SMALL))
        url_subject = image_server.url("/chelsea.png")
        url_id = await submit(client, tenant, body(url_subject, **SMALL))

        await run_burst_worker(public)

        for request_id in (inline_id, url_id):
            record = await get_record(client, tenant, request_id)
            assert record["status"] == "COMPLETED", record["error"]
        assert stand_in.subject_problems == []
        sent = {call.body["subject_image"] for call in only_valid(stand_in.calls()) if call.body}
        [signed] = sent - {url_subject}
        # A URL subject still goes as its original URL.
        assert url_subject in sent
        parts = urlsplit(signed)
        assert f"{parts.scheme}://{parts.netloc}" == TEST_SERVER
        assert parts.path == f"/v2/requests/{inline_id}/input"
        query = parse_qs(parts.query)
        assert set(query) == {"expires", "signature"}

        # The signed URL serves our copy of the input, without an API key.
        served = await client.get(local_path(signed))
        assert served.status_code == 200
        assert served.content == strip_metadata(example_bytes())  # our stored copy
        assert served.headers["content-type"] == "image/png"

        # A tampered signature, or another request's id, is refused.
        signature = query["signature"][0]
        forged = signature[:-1] + ("0" if signature[-1] != "0" else "1")
        tampered = await client.get(
            parts.path, params={"expires": query["expires"][0], "signature": forged}
        )
        assert tampered.status_code == 401
        assert tampered.json()["code"] == "invalid_signature"
        other = await client.get(
            f"/v2/requests/{url_id}/input",
            params={"expires": query["expires"][0], "signature": signature},
        )
        assert other.status_code == 401


# --- 2. every upstream answer ---------------------------------------------------------------------

MAX = 3  # settings.job_max_attempts in tests/conftest.py


@dataclass(frozen=True)
class Case:
    """An upstream behaviour and how the job must end. `statuses`: per attempt, the status of
    each upstream call (None: no answer); `codes`: per attempt, its error code (None: ok)."""

    always: Answer
    status: str
    code: str | None
    attempts: int
    statuses: list[list[int | None]]
    codes: list[str | None]
    script: tuple[Answer, ...] = ()


def failing(always: Answer, code: str, attempt_code: str, *, attempts: int) -> Case:
    status = always.status if always.kind is not Kind.HANG else None
    return Case(
        always=always,
        status="FAILED",
        code=code,
        attempts=attempts,
        statuses=[[status]] * attempts,
        codes=[attempt_code] * attempts,
    )


CASES = {
    "401": failing(Answer.error(401), "upstream_auth", "upstream_auth", attempts=1),
    "406": failing(Answer.error(406), "upstream_credits", "upstream_credits", attempts=1),
    "422": failing(
        Answer.error(422, "cfg: out of range"), "upstream_rejected", "upstream_rejected", attempts=1
    ),
    "429-always": failing(
        Answer.rate_limited(retry_after="0"),
        "upstream_unavailable",
        "upstream_rate_limited",
        attempts=MAX,
    ),
    **{
        f"{status}-always": failing(
            Answer.error(status), "upstream_unavailable", "upstream_error", attempts=MAX
        )
        for status in (500, 502, 504)
    },
    "500-then-200": Case(
        script=(Answer.error(500),),
        always=Answer.image(),
        status="COMPLETED",
        code=None,
        attempts=2,
        statuses=[[500], [200]],
        codes=["upstream_error", None],
    ),
    "hang": failing(Answer.hang(), "upstream_unavailable", "upstream_timeout", attempts=MAX),
    "garbage-webp": failing(
        Answer.garbage(), "upstream_unavailable", "upstream_invalid_response", attempts=MAX
    ),
    "html-always": failing(
        Answer.html(), "upstream_unavailable", "upstream_invalid_response", attempts=MAX
    ),
    "html-then-image": Case(
        script=(Answer.html(),),
        always=Answer.image(),
        status="COMPLETED",
        code=None,
        attempts=2,
        statuses=[[200], [200]],
        codes=["upstream_invalid_response", None],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_each_upstream_answer_ends_the_job_as_specified(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    stand_in: SegmindStandIn,
    segmind: Settings,
    engine: AsyncEngine,
    case: Case,
) -> None:
    assert segmind.job_max_attempts == MAX
    stand_in.script(case.script)
    stand_in.always(case.always)
    tenant = await make_tenant()
    request_id = await submit(sclient, tenant, body(example_base64(), **SMALL))
    reserved = (await get_record(sclient, tenant, request_id))["credits"]["reserved"]

    await run_burst_worker(segmind)

    record = await get_record(sclient, tenant, request_id)
    assert record["status"] == case.status
    assert record["attempts"] == case.attempts
    assert record["error_code"] == case.code
    assert record["backend"]["requested"] == "segmind"
    # Explicitly segmind: never another backend.
    assert {attempt["backend"] for attempt in record["backend"]["attempts"]} == {"segmind"}
    assert [attempt["attempt"] for attempt in record["backend"]["attempts"]] == list(
        range(1, case.attempts + 1)
    )
    assert call_statuses(record) == case.statuses
    assert [attempt.get("code") for attempt in record["backend"]["attempts"]] == case.codes
    assert len(only_valid(stand_in.calls())) == case.attempts

    entries = await ledger(engine, request_id)
    if case.status == "COMPLETED":
        assert record["backend"]["used"] == "segmind"
        assert len(record["outputs"]) == 1
        assert record["credits"] == {"reserved": reserved, "charged": reserved}
        assert entries == [("reserve", -reserved), ("charge", 0)]
        assert await balance_of(engine, tenant.tenant_id) == START - reserved
    else:
        assert record["outputs"] == []
        assert record["credits"] == {"reserved": reserved, "charged": 0}
        assert entries == [("reserve", -reserved), ("refund", reserved)]
        assert await balance_of(engine, tenant.tenant_id) == START


async def test_a_wrong_api_key_is_refused_by_segmind_and_fails_at_once(
    settings: Settings,
    clean_state: None,
    make_tenant: MakeTenant,
    stand_in: SegmindStandIn,
    engine: AsyncEngine,
) -> None:
    wrong = segmind_settings(settings, stand_in, segmind_api_key="not-the-key")
    tenant = await make_tenant()
    async with relight_client(wrong) as client:
        request_id = await submit(client, tenant, body(example_base64(), **SMALL))
        await run_burst_worker(wrong)
        record = await get_record(client, tenant, request_id)
    assert record["status"] == "FAILED"
    assert record["error_code"] == "upstream_auth"
    assert record["attempts"] == 1
    [call] = stand_in.calls()
    assert (call.headers["x-api-key"], call.status) == ("not-the-key", 401)
    [attempt] = record["backend"]["attempts"]
    assert attempt["calls"][0]["status_code"] == 401
    assert "invalid or missing API key" in attempt["calls"][0]["error"]
    assert [kind for kind, _ in await ledger(engine, request_id)] == ["reserve", "refund"]
    assert await balance_of(engine, tenant.tenant_id) == START


async def test_segmind_out_of_credits_answers_406_and_the_job_is_refunded(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    stand_in: SegmindStandIn,
    segmind: Settings,
    engine: AsyncEngine,
) -> None:
    """Not scripted: the stand-in's own credits run out after one image."""
    stand_in.credits = Decimal(1)
    tenant = await make_tenant()
    first = await submit(sclient, tenant, body(example_base64(), **SMALL))
    await run_burst_worker(segmind)
    second = await submit(sclient, tenant, body(example_base64(), **SMALL))
    await run_burst_worker(segmind)

    assert (await get_record(sclient, tenant, first))["status"] == "COMPLETED"
    record = await get_record(sclient, tenant, second)
    assert record["status"] == "FAILED"
    assert record["error_code"] == "upstream_credits"
    assert record["attempts"] == 1
    assert [call.status for call in stand_in.calls()] == [200, 406]
    assert [kind for kind, _ in await ledger(engine, second)] == ["reserve", "refund"]


async def test_remaining_credits_with_decimals_are_recorded(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    stand_in: SegmindStandIn,
    segmind: Settings,
) -> None:
    """Segmind's credits are dollars with decimals (its credit API answers 0.0184921035), so
    its `x-remaining-credits` header is not always a whole number."""
    stand_in.credits = Decimal("12.5")
    stand_in.cost_per_image = Decimal("0.037")
    tenant = await make_tenant()
    request_id = await submit(sclient, tenant, body(example_base64(), **SMALL))

    await run_burst_worker(segmind)

    record = await get_record(sclient, tenant, request_id)
    assert record["status"] == "COMPLETED"
    [call] = stand_in.calls()
    assert call.status == 200
    [made] = record["backend"]["attempts"][0]["calls"]
    assert made.get("remaining_credits") == pytest.approx(12.463)


# --- 4. Retry-After ---------------------------------------------------------------------------


async def test_retry_after_is_honoured_before_the_next_call(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    stand_in: SegmindStandIn,
    segmind: Settings,
    engine: AsyncEngine,
) -> None:
    stand_in.script([Answer.rate_limited(retry_after="2")])
    tenant = await make_tenant()
    request_id = await submit(sclient, tenant, body(example_base64(), **SMALL))

    await run_burst_worker(segmind)

    record = await get_record(sclient, tenant, request_id)
    assert record["status"] == "COMPLETED"
    assert record["attempts"] == 2
    assert call_statuses(record) == [[429], [200]]
    first, second = stand_in.calls()
    assert (first.status, second.status) == (429, 200)
    gap = second.arrived_at - first.arrived_at
    assert gap >= 2.0, f"the second call came {gap:.3f} s after the first"
    assert gap < 2.0 + 1.5, f"the retry waited much longer than asked: {gap:.3f} s"
    assert [kind for kind, _ in await ledger(engine, request_id)] == ["reserve", "charge"]


# --- submit-time checks -----------------------------------------------------------------------


async def test_segmind_without_an_api_key_is_refused_at_submit(
    settings: Settings,
    clean_state: None,
    make_tenant: MakeTenant,
    engine: AsyncEngine,
) -> None:
    unconfigured = settings.model_copy(update={"segmind_api_key": None})
    tenant = await make_tenant()
    async with relight_client(unconfigured) as client:
        response = await client.post(
            "/v2/ic-light", headers=tenant.headers, json=body(example_base64(), **SMALL)
        )
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "backend_not_allowed"
    assert await balance_of(engine, tenant.tenant_id) == START


async def test_a_tenant_not_allowed_segmind_is_refused_at_submit(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    sessionmaker: async_sessionmaker[AsyncSession],
    stand_in: SegmindStandIn,
    engine: AsyncEngine,
) -> None:
    tenant = await make_tenant()
    async with sessionmaker() as session, session.begin():
        await set_allowed_backends(session, await find_tenant(session, tenant.name), ["local"])
    for endpoint in ("/v2/ic-light", "/v1/ic-light"):
        response = await sclient.post(
            endpoint, headers=tenant.headers, json=body(example_base64(), **SMALL)
        )
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "backend_not_allowed"
        assert "segmind" in response.json()["error"]
    assert await balance_of(engine, tenant.tenant_id) == START
    assert stand_in.calls() == []


# --- the stand-in itself ----------------------------------------------------------------------


async def test_the_stand_in_checks_like_segmind(
    stand_in: SegmindStandIn, image_server: ImageServer
) -> None:
    good = seed_example(image_server.url("/chelsea.png"))
    key = {"x-api-key": stand_in.api_key}
    async with httpx.AsyncClient(base_url=stand_in.url, timeout=5) as http:
        missing = await http.post("/v1/ic-light", json=good)
        wrong = await http.post("/v1/ic-light", json=good, headers={"x-api-key": "nope"})
        assert (missing.status_code, wrong.status_code) == (401, 401)
        assert "error" in wrong.json()
        for bad in (
            {**good, "backend": "segmind"},  # ours, not Segmind's
            {**good, "cfg": 33},
            {**good, "width": 500},
            {**good, "steps": 2.5},
            {**good, "number_of_images": 13},
            {**good, "light_source": "left"},
            {**good, "output_format": "gif"},
            {**good, "output_quality": True},
            {key: value for key, value in good.items() if key != "prompt"},
            {key: value for key, value in good.items() if key != "subject_image"},
        ):
            refused = await http.post("/v1/ic-light", json=bad, headers=key)
            assert refused.status_code == 422, bad
            assert refused.json()["error"]
        not_an_image = await http.post(
            "/v1/ic-light",
            json={**good, "subject_image": image_server.url("/not-an-image")},
            headers=key,
        )
        assert not_an_image.status_code == 400
        for output_format, content_type, pil in [
            ("webp", "image/webp", "WEBP"),
            ("jpg", "image/jpeg", "JPEG"),
            ("png", "image/png", "PNG"),
        ]:
            answer = await http.post(
                "/v1/ic-light",
                json={**good, "output_format": output_format, "highres_scale": 2.0},
                headers=key,
            )
            assert answer.status_code == 200
            assert answer.headers["content-type"] == content_type
            image = Image.open(io.BytesIO(answer.content))
            assert (image.format, image.size) == (pil, (1024, 1280))
        assert answer.headers["x-remaining-credits"] == "997"
    assert len(stand_in.calls()) == 2 + 10 + 1 + 3
