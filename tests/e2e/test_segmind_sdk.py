"""Segmind's own Python SDK (PyPI `segmind`) against a live `relight-api` + `relight-worker`,
pointed at Relight with `base_url` and nothing else changed."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from PIL import Image
from segmind import SegmindClient
from segmind.exceptions import SegmindError
from segmind.v2 import InferenceFailed
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.core.config import Settings
from scripts.stack import local_stack
from tests.conftest import MakeTenant, TenantKey
from tests.e2e.test_live_stack import _environment
from tests.fakes.image_server import ImageServer
from tests.helpers import balance_of, fast_body
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

SLUG = "ic-light"


@pytest.fixture(scope="module")
def base_url(
    settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    env = _environment(
        settings,
        tmp_path_factory.mktemp("sdk-storage"),
        RELIGHT_QUEUE_NAME=settings.queue_name + ":sdk",
        # A failed attempt waits long enough for the cancel test to catch the job queued.
        RELIGHT_RETRY_BACKOFF_S="30",
    )
    with local_stack(env, tmp_path_factory.mktemp("sdk-logs")) as client:
        yield str(client.base_url).rstrip("/")


@contextmanager
def sdk(base_url: str, key: str) -> Iterator[SegmindClient]:
    """The client exactly as Segmind documents it, with Relight's URL as `base_url`."""
    client = SegmindClient(api_key=key, base_url=f"{base_url}/v1")
    try:
        yield client
    finally:
        # The SDK has no close(); its connection pool is this httpx.Client.
        client._client.close()


def body(**overrides: Any) -> dict[str, Any]:
    return fast_body(seed=7, **overrides)


def fetch_image(url: str) -> Image.Image:
    """Download an output URL as a browser would: no API key, the URL's signature only."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


async def test_run_returns_segminds_result_shape(base_url: str, tenant: TenantKey) -> None:
    with sdk(base_url, tenant.key) as client:
        result = await asyncio.to_thread(client.run, SLUG, **body())

        assert result["status"] == "COMPLETED"
        assert isinstance(result["output"], str)
        assert result["output"] == result["outputs"][0]["url"]
        assert result["metrics"]["total_ms"] > 0
        image = await asyncio.to_thread(fetch_image, result["output"])
        assert (image.format, image.size) == ("PNG", (256, 256))


async def test_submit_async_then_wait(base_url: str, tenant: TenantKey) -> None:
    with sdk(base_url, tenant.key) as client:
        job = await asyncio.to_thread(client.submit_async, SLUG, **body(number_of_images=2))
        assert job.submit_response["status"] == "QUEUED"
        result = await asyncio.to_thread(job.wait, 60, 0.05)

        assert result["request_id"] == job.request_id
        assert result["status"] == "COMPLETED"
        # Several images: `output` is the list of their URLs, in order.
        assert result["output"] == [output["url"] for output in result["outputs"]]
        assert len(result["output"]) == 2
        for url in result["output"]:
            image = await asyncio.to_thread(fetch_image, url)
            assert image.size == (256, 256)


async def test_run_sync_answers_image_bytes(base_url: str, tenant: TenantKey) -> None:
    with sdk(base_url, tenant.key) as client:
        response = await asyncio.to_thread(client.run_sync, SLUG, **body())

        assert response.headers["x-seed-value"] == "7"
        image = Image.open(io.BytesIO(response.content))
        assert (image.format, image.size) == ("PNG", (256, 256))


async def test_an_invalid_parameter_is_a_422_with_the_message(
    base_url: str, tenant: TenantKey
) -> None:
    with sdk(base_url, tenant.key) as client:
        for call in (client.run, client.run_sync):
            with pytest.raises(SegmindError) as raised:
                await asyncio.to_thread(call, SLUG, **body(steps=500))
            assert raised.value.status == 422
            assert isinstance(raised.value.detail, str)
            assert "steps" in raised.value.detail


async def test_a_wrong_key_is_a_401(base_url: str, tenant: TenantKey) -> None:
    with sdk(base_url, "rl_nothing_here") as client:
        with pytest.raises(SegmindError) as raised:
            await asyncio.to_thread(client.run, SLUG, **body())
        assert raised.value.status == 401
        assert isinstance(raised.value.detail, str)


async def test_a_failed_request_raises_inference_failed_with_a_string(
    base_url: str, tenant: TenantKey, image_server: ImageServer
) -> None:
    with sdk(base_url, tenant.key) as client:
        missing = image_server.url("/missing.png")

        with pytest.raises(InferenceFailed) as raised:
            await asyncio.to_thread(client.run, SLUG, **body(subject_image=missing))

        assert isinstance(raised.value.detail, str)
        assert "404" in raised.value.detail
        assert raised.value.status_body["status"] == "FAILED"
        assert raised.value.status_body["error_code"] == "input_fetch_failed"


async def test_out_of_credits_is_a_406(base_url: str, make_tenant: MakeTenant) -> None:
    broke = await make_tenant("broke", credits=0)
    with sdk(base_url, broke.key) as client:
        for call in (client.run, client.run_sync):
            with pytest.raises(SegmindError) as raised:
                await asyncio.to_thread(call, SLUG, **body())
            assert raised.value.status == 406
            assert isinstance(raised.value.detail, str)
            assert "credits" in raised.value.detail


def _cancel_when_queued(base_url: str, tenant: TenantKey, request_id: str) -> dict[str, Any]:
    """Cancel the request; while an attempt runs (409) try again, until it waits to retry."""
    deadline = time.monotonic() + 20
    while True:
        response = httpx.post(
            f"{base_url}/v2/requests/{request_id}/cancel", headers=tenant.headers, timeout=10
        )
        if response.status_code != 409 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            answer: dict[str, Any] = response.json()
            return answer
        time.sleep(0.05)


async def test_a_canceled_request_ends_wait_at_once(
    base_url: str, tenant: TenantKey, image_server: ImageServer
) -> None:
    with sdk(base_url, tenant.key) as client:
        job = await asyncio.to_thread(
            client.submit_async, SLUG, **body(subject_image=image_server.url("/broken"))
        )
        canceled = await asyncio.to_thread(_cancel_when_queued, base_url, tenant, job.request_id)
        assert canceled["status"] == "CANCELED"  # Relight's own clients see CANCELED

        started = time.monotonic()
        with pytest.raises(InferenceFailed) as raised:
            await asyncio.to_thread(job.wait, 30, 0.05)

        # At once: not at the end of the 30 s wait it was given.
        assert time.monotonic() - started < 20
        assert raised.value.detail == "the request was canceled"
        assert raised.value.status_body["error_code"] == "canceled"
        plain = await asyncio.to_thread(
            httpx.get, job.status_url, headers=tenant.headers, timeout=10
        )
        assert plain.json()["status"] == "CANCELED"


async def test_run_sync_that_times_out_before_its_image_is_ready_is_refunded(
    base_url: str, tenant: TenantKey, engine: AsyncEngine
) -> None:
    """The SDK's `timeout` below `RELIGHT_SYNC_TIMEOUT_S`: it hangs up and never learns the id,
    so Relight cancels and refunds the request."""
    before = await balance_of(engine, tenant.tenant_id)
    # Four 3072² images on the classic engine: seconds of work, far beyond the SDK's 2 s.
    slow = body(width=1024, height=1024, highres_scale=3, number_of_images=4)
    client = SegmindClient(api_key=tenant.key, base_url=f"{base_url}/v1", timeout=2.0)
    try:
        with pytest.raises(httpx.ReadTimeout):
            await asyncio.to_thread(client.run_sync, SLUG, **slow)
    finally:
        client._client.close()

    async def refunded() -> bool:
        async with engine.connect() as connection:
            kinds = (
                await connection.scalars(
                    text(
                        "SELECT entry.kind FROM credit_entry AS entry JOIN job"
                        " ON job.id = entry.job_id WHERE job.tenant_id = :tenant"
                        " AND job.status = 'canceled'"
                    ),
                    {"tenant": tenant.tenant_id},
                )
            ).all()
        return sorted(kinds) == ["refund", "reserve"]

    await wait_until(refunded, what="the hung-up request was canceled and refunded")
    assert await balance_of(engine, tenant.tenant_id) == before
