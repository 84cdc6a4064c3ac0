"""Helpers the API and worker tests share: images, submitting, reading requests, the database."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from PIL import Image
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import TenantKey

# The base URL of the ASGI test client (see the `client` fixture), which output URLs carry.
TEST_SERVER = "http://testserver"


def png_bytes(
    size: tuple[int, int] = (64, 80), color: tuple[int, int, int] = (200, 120, 80)
) -> bytes:
    """A PNG of `size` pixels, all of one `color`."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


# A small subject image (96×120), base64 as `subject_image` takes it.
SMALL_PNG_BASE64 = base64.b64encode(png_bytes((96, 120), (90, 140, 200))).decode()
# A request the classic engine renders in a blink: one 256×256 image.
FAST: dict[str, Any] = {
    "width": 256,
    "height": 256,
    "highres_scale": 1,
    "steps": 10,
    "output_format": "png",
}


def small_body(prompt: str = "cat, soft window light", **overrides: Any) -> dict[str, Any]:
    """A request body with `SMALL_PNG_BASE64` as its subject."""
    return {"prompt": prompt, "subject_image": SMALL_PNG_BASE64, **overrides}


def fast_body(**overrides: Any) -> dict[str, Any]:
    """A `FAST` request body with `SMALL_PNG_BASE64` as its subject; `overrides` win."""
    return {
        "prompt": "cat, soft window light",
        "subject_image": SMALL_PNG_BASE64,
        **FAST,
    } | overrides


async def submit(client: httpx.AsyncClient, tenant: TenantKey, payload: dict[str, Any]) -> str:
    """Submit `payload` to /v2/ic-light as `tenant`, check it was queued, answer its request id."""
    response = await client.post("/v2/ic-light", headers=tenant.headers, json=payload)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "QUEUED"
    request_id: str = accepted["request_id"]
    return request_id


async def get_record(
    client: httpx.AsyncClient, tenant: TenantKey, request_id: str
) -> dict[str, Any]:
    """The full record of a request, read as its owner (it must answer 200)."""
    response = await client.get(f"/v2/requests/{request_id}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


async def get_status(
    client: httpx.AsyncClient, tenant: TenantKey, request_id: str
) -> dict[str, Any]:
    """The body of a request's /status answer, read as `tenant`."""
    status: dict[str, Any] = (
        await client.get(f"/v2/requests/{request_id}/status", headers=tenant.headers)
    ).json()
    return status


async def cancel(client: httpx.AsyncClient, tenant: TenantKey, request_id: str) -> dict[str, Any]:
    """Cancel a request as its owner (it must answer 200) and answer the returned record."""
    response = await client.post(f"/v2/requests/{request_id}/cancel", headers=tenant.headers)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def assert_never_ran(record: dict[str, Any]) -> None:
    """A canceled request's record, from one that no worker ever started."""
    assert record["status"] == "CANCELED"
    assert record["attempts"] == 0
    assert record["started_at"] is None
    assert record["outputs"] == []


def local_path(url: str) -> str:
    """The path (and query) of a URL the API answered, for the ASGI test client to follow."""
    assert url.startswith(f"{TEST_SERVER}/"), url
    return url.removeprefix(TEST_SERVER)


async def balance_of(engine: AsyncEngine, tenant_id: uuid.UUID) -> int:
    """A tenant's credit balance, read straight from the database."""
    async with engine.connect() as connection:
        value = await connection.scalar(
            text("select credit_balance from tenant where id = :id"), {"id": tenant_id}
        )
    assert value is not None
    return int(value)


async def job_count(engine: AsyncEngine) -> int:
    """How many jobs the database holds, across all tenants."""
    async with engine.connect() as connection:
        value = await connection.scalar(text("select count(*) from job"))
    return int(value or 0)


@contextmanager
def assert_no_server_errors(client: httpx.AsyncClient) -> Iterator[list[httpx.Response]]:
    """Record `client`'s answers in the block; on leaving it, fail if any of them was a 5xx."""
    seen: list[httpx.Response] = []

    async def record(response: httpx.Response) -> None:
        seen.append(response)

    client.event_hooks["response"].append(record)
    yield seen
    server_errors = [
        f"{r.request.method} {r.request.url.path} -> {r.status_code}"
        for r in seen
        if r.status_code >= 500
    ]
    assert not server_errors, server_errors
