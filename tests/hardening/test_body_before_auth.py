"""Bodies (issue 28, breaks 4 and 5): the admin token is checked before a body is read, and
each route takes a body of its own size (the relight submits an inline image's worth, the
rest 64 KiB), cut off as it streams in: the server stops reading and answers 401/403/413
before the client has sent it all. Served by a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from relight.core.config import Settings
from tests.conftest import TenantKey
from tests.hardening.live import BodyBytesRead, serve, stream_until_answered

ADMIN_TOKEN = "a" * 32
PIECE = b"x" * 16384
PIECES = 60 * 1024 * 1024 // len(PIECE)  # a 60 MB body, if the server took it all


@pytest.fixture
async def server(settings: Settings, clean_state: None) -> AsyncIterator[tuple[int, BodyBytesRead]]:
    counted = BodyBytesRead(create_app(settings.model_copy(update={"admin_token": ADMIN_TOKEN})))
    async with serve(counted) as port:
        yield port, counted


def head(
    path: str,
    *,
    token: str | None = None,
    length: int | None = None,
    content_type: str = "application/json",
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines.append(f"Content-Length: {length}" if length else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def tenant_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("select count(*) from tenant")) or 0)


@pytest.mark.parametrize("token", [None, "wrong-" + "b" * 26])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_admin_body_without_the_token_is_refused_before_it_is_read(
    server: tuple[int, BodyBytesRead], engine: AsyncEngine, token: str | None, chunked: bool
) -> None:
    port, counted = server
    length = None if chunked else len(PIECE) * PIECES

    streamed = await stream_until_answered(
        port, head("/admin/v1/tenants", token=token, length=length), PIECE, PIECES, chunked=chunked
    )

    assert streamed.status == 401, streamed.answer[:300]
    assert b'"code":"invalid_admin_token"' in streamed.answer
    assert counted.read == 0
    assert streamed.sent < len(PIECE) * PIECES // 10
    assert await tenant_count(engine) == 0


async def test_the_admin_api_off_refuses_a_body_before_reading_it(
    settings: Settings, clean_state: None
) -> None:
    counted = BodyBytesRead(create_app(settings))
    async with serve(counted) as port:
        streamed = await stream_until_answered(
            port, head("/admin/v1/tenants", token=ADMIN_TOKEN), PIECE, PIECES, chunked=True
        )
    assert streamed.status == 403, streamed.answer[:300]
    assert counted.read == 0


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/admin/v1/tenants", "application/json"),
        ("/admin/ui/login", "application/x-www-form-urlencoded"),
    ],
)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_a_small_routes_cap_is_a_413_before_it_is_read(
    server: tuple[int, BodyBytesRead],
    settings: Settings,
    path: str,
    content_type: str,
    chunked: bool,
) -> None:
    port, counted = server
    length = None if chunked else len(PIECE) * PIECES
    request_head = head(path, token=ADMIN_TOKEN, length=length, content_type=content_type)

    streamed = await stream_until_answered(port, request_head, PIECE, PIECES, chunked=chunked)

    assert streamed.status == 413, streamed.answer[:300]
    body = json.loads(streamed.answer.split(b"\r\n\r\n", 1)[1])
    assert body["code"] == "body_too_large"
    assert body["limit_bytes"] == settings.max_json_body_bytes == 65536
    assert str(settings.max_json_body_bytes) in body["error"]
    assert set(body) >= {"error", "code", "request_id"}
    assert counted.read <= settings.max_json_body_bytes + 2 * len(PIECE)
    assert streamed.sent < len(PIECE) * PIECES // 10


async def test_a_submit_body_over_an_images_worth_is_a_413_as_it_streams(
    server: tuple[int, BodyBytesRead], settings: Settings, tenant: TenantKey
) -> None:
    port, counted = server
    cap = settings.max_input_bytes * 4 // 3 + 64 * 1024
    lines = [
        "POST /v2/ic-light HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"x-api-key: {tenant.key}",
        "Transfer-Encoding: chunked",
    ]
    pieces = (cap * 3) // len(PIECE)

    streamed = await stream_until_answered(
        port, ("\r\n".join(lines) + "\r\n\r\n").encode(), PIECE, pieces, chunked=True
    )

    assert streamed.status == 413, streamed.answer[:300]
    assert counted.read <= cap + 2 * len(PIECE)
    assert streamed.sent < len(PIECE) * pieces


async def test_a_submit_of_many_small_json_values_is_a_413_not_a_parse(
    client: httpx.AsyncClient, tenant: TenantKey, settings: Settings
) -> None:
    # `{}` up to the byte cap (an image's worth; 20 MB by default): within it, but a great
    # many objects to parse (what took 778 MB for a 422).
    values = (settings.max_input_bytes * 4 // 3) // 4
    content = b'{"prompt": [' + b"{}, " * values + b"{}]}"

    response = await client.post(
        "/v2/ic-light",
        headers={**tenant.headers, "content-type": "application/json"},
        content=content,
    )

    assert response.status_code == 413, response.text[:300]
    assert response.json()["code"] == "body_too_large"
    assert "more than 16384 JSON objects and items" in response.json()["error"]
