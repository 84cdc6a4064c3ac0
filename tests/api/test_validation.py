"""Bad input gets a clear 4xx naming what is wrong, never a 500, and never costs credits."""

from __future__ import annotations

import base64
import gc
import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.tenants.keys import format_key
from relight.tenants.service import revoke_api_key
from tests.conftest import MakeTenant, RunWorker, TenantKey, example_bytes
from tests.fakes.image_server import ImageServer
from tests.helpers import assert_no_server_errors, balance_of, get_status, job_count, png_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL_PNG_BASE64 = base64.b64encode(png_bytes()).decode()


def settle_garbage() -> None:
    """Collect now, so a file the server left open warns in the test that opened it."""
    gc.collect()


def body(**overrides: Any) -> dict[str, Any]:
    """A valid submission (small inline PNG), with some fields replaced."""
    return {"prompt": "cat, warm window light", "subject_image": SMALL_PNG_BASE64, **overrides}


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The documented error shape: `{"error": <message>, "code": <code>, "request_id": ...}`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload: dict[str, Any] = response.json()
    assert isinstance(payload.get("error"), str)
    assert payload["error"]
    assert isinstance(payload.get("code"), str)
    assert "request_id" in payload
    if code is not None:
        assert payload["code"] == code, payload
    return payload


def assert_invalid_field(response: httpx.Response, field: str) -> dict[str, Any]:
    payload = assert_error(response, 422, "validation_error")
    assert payload["field"] == field, payload
    assert field in payload["error"], payload
    assert isinstance(payload.get("details"), list), f"a 422 without details: {payload}"
    assert any(detail["field"] == field for detail in payload["details"]), payload
    return payload


async def assert_nothing_created_or_charged(engine: AsyncEngine, tenant: TenantKey) -> None:
    """A refused request left no job behind and `tenant` still has its starting 1000 credits."""
    assert await job_count(engine) == 0
    assert await balance_of(engine, tenant.tenant_id) == 1000


async def post_body(
    client: httpx.AsyncClient, tenant: TenantKey, **overrides: Any
) -> httpx.Response:
    """POST a valid submission with some fields replaced to /v2/ic-light, as `tenant`."""
    return await client.post("/v2/ic-light", headers=tenant.headers, json=body(**overrides))


@pytest.fixture(autouse=True)
def no_server_errors(client: httpx.AsyncClient) -> Iterator[list[httpx.Response]]:
    """The sweep: whatever a test sends, no answer it received was a 5xx."""
    with assert_no_server_errors(client) as seen:
        yield seen


# --- parameters: ranges and enums ------------------------------------------------------------

OUT_OF_RANGE: list[tuple[str, Any]] = [
    ("cfg", 0.99),
    ("cfg", 32.01),
    ("width", 250),
    ("width", 1088),
    ("width", 300),
    ("height", 250),
    ("height", 1088),
    ("height", 300),
    ("steps", 0),
    ("steps", 101),
    ("seed", -2),
    ("seed", 10**15),
    ("highres_scale", 0.99),
    ("highres_scale", 3.01),
    ("highres_denoise", 0.09),
    ("highres_denoise", 1.01),
    ("lowres_denoise", 0.09),
    ("lowres_denoise", 1.01),
    ("light_source", "Diagonal Light"),
    ("number_of_images", 0),
    ("number_of_images", 13),
    ("output_format", "gif"),
    ("output_quality", -1),
    ("output_quality", 101),
    ("steps", "many"),
    ("cfg", "lots"),
    ("number_of_images", 2.5),
    ("backend", "quantum"),
]


@pytest.mark.parametrize(("field", "value"), OUT_OF_RANGE)
async def test_a_value_outside_its_range_is_a_422_naming_the_field(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine, field: str, value: Any
) -> None:
    response = await post_body(client, tenant, **{field: value})

    assert_invalid_field(response, field)
    await assert_nothing_created_or_charged(engine, tenant)


ON_THE_BOUNDARY: list[tuple[str, Any]] = [
    ("cfg", 1),
    ("cfg", 32),
    ("width", 256),
    ("width", 1024),
    ("height", 256),
    ("height", 1024),
    ("steps", 1),
    ("steps", 100),
    ("seed", -1),
    ("seed", 0),
    ("seed", 999_999_999_999_999),
    ("highres_scale", 1),
    ("highres_scale", 3),
    ("highres_denoise", 0.1),
    ("highres_denoise", 1),
    ("lowres_denoise", 0.1),
    ("lowres_denoise", 1),
    ("light_source", "Bottom Light"),
    ("number_of_images", 1),
    ("number_of_images", 12),
    ("output_format", "png"),
    ("output_format", "jpg"),
    ("output_quality", 0),
    ("output_quality", 100),
]


@pytest.mark.parametrize(("field", "value"), ON_THE_BOUNDARY)
async def test_a_value_on_the_boundary_is_accepted(
    client: httpx.AsyncClient, tenant: TenantKey, field: str, value: Any
) -> None:
    response = await post_body(client, tenant, **{field: value})

    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    record = (await client.get(f"/v2/requests/{request_id}", headers=tenant.headers)).json()
    if field == "seed" and value == -1:
        # Segmind's "random seed": one is picked and recorded.
        assert 0 <= record["params"]["seed"] < 2**32
    else:
        assert record["params"][field] == value


async def test_an_unknown_webhook_event_is_a_422_naming_the_item(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await post_body(client, tenant, webhook_events=["completed", "done"])

    assert_invalid_field(response, "webhook_events.1")


async def test_an_unknown_field_is_a_422_naming_it(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await post_body(client, tenant, strength=0.7)

    payload = assert_invalid_field(response, "strength")
    assert "not a known parameter" in payload["error"]


async def test_a_missing_prompt_is_a_422_naming_it(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await client.post(
        "/v2/ic-light", headers=tenant.headers, json={"subject_image": SMALL_PNG_BASE64}
    )

    payload = assert_invalid_field(response, "prompt")
    assert "required" in payload["error"]


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
async def test_a_blank_prompt_is_a_422(
    client: httpx.AsyncClient, tenant: TenantKey, prompt: str
) -> None:
    response = await post_body(client, tenant, prompt=prompt)

    assert_invalid_field(response, "prompt")


async def test_a_missing_subject_image_is_a_422_naming_it(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await client.post("/v2/ic-light", headers=tenant.headers, json={"prompt": "cat"})

    payload = assert_invalid_field(response, "subject_image")
    assert "required" in payload["error"]


async def test_the_synchronous_v1_endpoint_validates_alike(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await client.post("/v1/ic-light", headers=tenant.headers, json=body(steps=101))

    assert_invalid_field(response, "steps")


# --- authentication --------------------------------------------------------------------------


async def test_no_api_key_is_a_401(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    response = await client.post("/v2/ic-light", json=body())

    payload = assert_error(response, 401, "unauthorized")
    assert "x-api-key" in payload["error"]


@pytest.mark.parametrize(
    "key",
    [
        format_key("0123456789ab", "A" * 43),  # well-formed, valid checksum, unknown prefix
        "rl_0123456789ab_" + "A" * 49,  # the right shape, a wrong checksum
        "not-a-relight-key",  # malformed
        "",  # empty header
    ],
)
async def test_an_unknown_or_malformed_key_is_a_401(
    client: httpx.AsyncClient, tenant: TenantKey, key: str
) -> None:
    response = await client.post("/v2/ic-light", headers={"x-api-key": key}, json=body())

    assert_error(response, 401, "unauthorized")


async def test_a_known_prefix_with_the_wrong_secret_is_a_401(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    prefix = tenant.key[len("rl_") : len("rl_0123456789ab")]
    forged = format_key(prefix, "B" * 43)  # passes the checksum: the secret check refuses it
    assert forged != tenant.key

    response = await client.post("/v2/ic-light", headers={"x-api-key": forged}, json=body())

    assert_error(response, 401, "unauthorized")


async def test_a_revoked_key_is_a_401(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    assert (await client.get("/v2/requests", headers=tenant.headers)).status_code == 200
    async with sessionmaker() as session, session.begin():
        await revoke_api_key(session, tenant.key)

    response = await post_body(client, tenant)

    payload = assert_error(response, 401, "unauthorized")
    assert "revoked" in payload["error"]
    assert (await client.get("/v2/requests", headers=tenant.headers)).status_code == 401


async def test_a_bearer_token_is_accepted(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    response = await client.post(
        "/v2/ic-light", headers={"Authorization": f"Bearer {tenant.key}"}, json=body()
    )

    assert response.status_code == 202, response.text
    listing = await client.get("/v2/requests", headers={"Authorization": f"Bearer {tenant.key}"})
    assert [item["request_id"] for item in listing.json()["data"]] == [
        response.json()["request_id"]
    ]


async def test_a_wrong_bearer_token_is_a_401(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    response = await client.post(
        "/v2/ic-light", headers={"Authorization": "Bearer rl_nope"}, json=body()
    )

    assert_error(response, 401, "unauthorized")


# --- the body itself -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "cat", "subject_image": ',  # cut short
        b"prompt=cat&subject_image=x",
        b"\xff\xfe\x00garbage",
        b"[]",
        b'[{"prompt": "cat"}]',
        b'"just a string"',
        b"42",
        b"null",
        b"",
        b"   \n",
    ],
)
async def test_a_body_that_is_not_a_json_object_is_a_400(
    client: httpx.AsyncClient, tenant: TenantKey, raw: bytes
) -> None:
    response = await client.post(
        "/v2/ic-light",
        headers={**tenant.headers, "Content-Type": "application/json"},
        content=raw,
    )

    assert_error(response, 400, "invalid_body")


async def test_an_unsupported_content_type_is_a_415(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await client.post(
        "/v2/ic-light",
        headers={**tenant.headers, "Content-Type": "text/plain"},
        content=orjson.dumps(body()),
    )

    payload = assert_error(response, 415)
    assert "text/plain" in payload["error"]


# --- subject_image ---------------------------------------------------------------------------


async def test_base64_of_bytes_that_are_no_image_is_a_400_invalid_image(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine
) -> None:
    garbage = base64.b64encode(os.urandom(2048)).decode()

    response = await post_body(client, tenant, subject_image=garbage)

    assert_error(response, 400, "invalid_image")
    await assert_nothing_created_or_charged(engine, tenant)


@pytest.mark.parametrize(
    "value",
    [
        "a photo of my cat, please relight it!",
        "%%%% not base64 %%%%",
        "data:image/png,not-base64-encoded",
    ],
)
async def test_text_that_is_not_base64_is_a_400(
    client: httpx.AsyncClient, tenant: TenantKey, value: str
) -> None:
    response = await post_body(client, tenant, subject_image=value)

    payload = assert_error(response, 400, "invalid_image")
    assert "subject_image" in payload["error"]


async def test_a_data_url_of_a_png_is_accepted(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    data_url = "data:image/png;base64," + SMALL_PNG_BASE64

    response = await post_body(client, tenant, subject_image=data_url)

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "QUEUED"


async def test_a_multipart_upload_of_a_png_is_accepted(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await client.post(
        "/v2/ic-light",
        headers=tenant.headers,
        data={"prompt": "cat, neon light", "steps": "10", "light_source": "Left Light"},
        files={"subject_image": ("chelsea.png", example_bytes(), "image/png")},
    )
    settle_garbage()

    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    record = (await client.get(f"/v2/requests/{request_id}", headers=tenant.headers)).json()
    assert record["params"]["steps"] == 10
    assert record["params"]["light_source"] == "Left Light"


async def test_a_multipart_upload_of_a_non_image_is_a_400(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine
) -> None:
    response = await client.post(
        "/v2/ic-light",
        headers=tenant.headers,
        data={"prompt": "cat"},
        files={"subject_image": ("cat.png", b"definitely not a png", "image/png")},
    )
    settle_garbage()

    assert_error(response, 400, "invalid_image")
    assert await job_count(engine) == 0


async def test_a_multipart_form_is_validated_like_json(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await client.post(
        "/v2/ic-light",
        headers=tenant.headers,
        data={"prompt": "cat", "steps": "many"},
        files={"subject_image": ("chelsea.png", png_bytes(), "image/png")},
    )
    settle_garbage()

    assert_invalid_field(response, "steps")


async def test_a_truncated_png_is_a_400(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    whole = example_bytes()
    half = base64.b64encode(whole[: len(whole) // 2]).decode()

    response = await post_body(client, tenant, subject_image=half)

    assert_error(response, 400, "invalid_image")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/cat.png",
        "file:///etc/passwd",
        "http://user:secret@example.com/cat.png",
        "http:///cat.png",
    ],
)
async def test_a_url_that_is_not_plain_http_is_a_422(
    client: httpx.AsyncClient, tenant: TenantKey, url: str
) -> None:
    response = await post_body(client, tenant, subject_image=url)

    assert_invalid_field(response, "subject_image")


# --- size limits -----------------------------------------------------------------------------


async def test_an_inline_image_over_the_byte_limit_is_a_413(
    client: httpx.AsyncClient, tenant: TenantKey, settings: Settings, engine: AsyncEngine
) -> None:
    too_big = PNG_SIGNATURE + b"\0" * (settings.max_input_bytes + 1024)

    response = await post_body(client, tenant, subject_image=base64.b64encode(too_big).decode())

    assert_error(response, 413, "image_too_large")
    await assert_nothing_created_or_charged(engine, tenant)


async def test_an_upload_over_the_byte_limit_is_a_413(
    client: httpx.AsyncClient, tenant: TenantKey, settings: Settings
) -> None:
    too_big = PNG_SIGNATURE + b"\0" * (settings.max_input_bytes + 1024)

    response = await client.post(
        "/v2/ic-light",
        headers=tenant.headers,
        data={"prompt": "cat"},
        files={"subject_image": ("big.png", too_big, "image/png")},
    )
    settle_garbage()

    assert_error(response, 413, "image_too_large")


async def test_an_image_over_the_pixel_limit_is_a_413(
    client: httpx.AsyncClient, tenant: TenantKey, settings: Settings
) -> None:
    wide = png_bytes(size=(2100, 2000), color=(10, 20, 30))
    assert len(wide) < settings.max_input_bytes  # small in bytes, large in pixels
    assert 2100 * 2000 > settings.max_input_pixels

    response = await post_body(client, tenant, subject_image=base64.b64encode(wide).decode())

    payload = assert_error(response, 413, "image_too_large")
    assert "pixels" in payload["error"]


async def test_a_json_body_far_over_the_limit_is_a_413(
    client: httpx.AsyncClient, tenant: TenantKey, settings: Settings
) -> None:
    huge = orjson.dumps(body(negative_prompt="x" * (4 * settings.max_input_bytes)))

    response = await client.post(
        "/v2/ic-light",
        headers={**tenant.headers, "Content-Type": "application/json"},
        content=huge,
    )

    assert int(response.request.headers["content-length"]) == len(huge)
    assert_error(response, 413, "image_too_large")


# --- URL inputs fail in the worker, refunded -------------------------------------------------


@pytest.mark.parametrize(
    ("path", "code"),
    [("/missing", "input_fetch_failed"), ("/not-an-image", "invalid_image")],
)
async def test_a_bad_subject_url_fails_the_request_and_refunds_it(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    image_server: ImageServer,
    run_worker: RunWorker,
    engine: AsyncEngine,
    path: str,
    code: str,
) -> None:
    submitted = await post_body(client, tenant, subject_image=image_server.url(path))
    assert submitted.status_code == 202, submitted.text
    request_id = submitted.json()["request_id"]
    reserved = submitted.json()["credits_reserved"]
    assert reserved > 0
    assert await balance_of(engine, tenant.tenant_id) == 1000 - reserved

    await run_worker()

    record = (await client.get(f"/v2/requests/{request_id}", headers=tenant.headers)).json()
    assert record["status"] == "FAILED"
    assert record["error_code"] == code
    assert record["error"]
    assert record["outputs"] == []
    assert record["credits"]["charged"] == 0
    assert await balance_of(engine, tenant.tenant_id) == 1000
    status = await get_status(client, tenant, request_id)
    assert status["status"] == "FAILED"
    assert status["error_code"] == code


# --- request ids ---------------------------------------------------------------------------


def request_endpoints(request_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/v2/requests/{request_id}/status"),
        ("GET", f"/v2/requests/{request_id}"),
        ("POST", f"/v2/requests/{request_id}/cancel"),
        ("GET", f"/v2/requests/{request_id}/outputs/0"),
    ]


async def test_an_unknown_request_id_is_a_404_everywhere(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    unknown = str(uuid.uuid4())
    for method, path in request_endpoints(unknown):
        response = await client.request(method, path, headers=tenant.headers)
        assert_error(response, 404)


async def test_another_tenants_request_is_a_404_everywhere(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    make_tenant: MakeTenant,
    engine: AsyncEngine,
) -> None:
    submitted = await post_body(client, tenant)
    assert submitted.status_code == 202, submitted.text
    request_id = submitted.json()["request_id"]
    other = await make_tenant("other")

    for method, path in request_endpoints(request_id):
        response = await client.request(method, path, headers=other.headers)
        payload = assert_error(response, 404)
        assert "not_found" in payload["code"]

    # The owner still sees it queued: the stranger's cancel did nothing.
    status = await client.get(f"/v2/requests/{request_id}/status", headers=tenant.headers)
    assert status.json()["status"] == "QUEUED"
    assert await balance_of(engine, other.tenant_id) == 1000


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "12345", "0000"])
async def test_a_request_id_that_is_not_a_uuid_is_a_422(
    client: httpx.AsyncClient, tenant: TenantKey, bad_id: str
) -> None:
    for method, path in request_endpoints(bad_id):
        response = await client.request(method, path, headers=tenant.headers)
        assert_invalid_field(response, "request_id")


# --- credits -------------------------------------------------------------------------------


async def test_insufficient_credits_is_a_406_and_creates_nothing(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    poor = await make_tenant("poor", credits=5)

    response = await client.post("/v2/ic-light", headers=poor.headers, json=body())

    payload = assert_error(response, 406, "insufficient_credits")
    assert payload["required"] == 10
    assert payload["available"] == 5
    listing = await client.get("/v2/requests", headers=poor.headers)
    assert listing.status_code == 200
    assert listing.json()["data"] == []
    assert await job_count(engine) == 0
    assert await balance_of(engine, poor.tenant_id) == 5
    # Nor was the refused request's image kept in storage.
    leftovers = list((settings.storage_dir / "inputs" / str(poor.tenant_id)).glob("*"))
    assert leftovers == []


async def test_a_cheaper_request_fits_a_small_balance(
    client: httpx.AsyncClient, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    poor = await make_tenant("poor", credits=5)

    response = await client.post(
        "/v2/ic-light",
        headers=poor.headers,
        json=body(width=256, height=256, highres_scale=1, steps=10),
    )

    assert response.status_code == 202, response.text
    reserved = response.json()["credits_reserved"]
    assert 1 <= reserved <= 5
    assert await balance_of(engine, poor.tenant_id) == 5 - reserved


async def test_the_sweep_sees_every_answer(
    client: httpx.AsyncClient, tenant: TenantKey, no_server_errors: list[httpx.Response]
) -> None:
    await client.post("/v2/ic-light", json=body())
    await client.get("/v2/requests/not-a-uuid", headers=tenant.headers)

    assert [response.status_code for response in no_server_errors] == [401, 422]
