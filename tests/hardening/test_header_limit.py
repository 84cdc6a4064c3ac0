"""Request heads (issue 28, break 6): a 100 MB header on `GET /healthz` was read and answered
200. Served as `relight-api` serves it (uvicorn with `api.serving.server_options`), a head over
RELIGHT_MAX_HEADER_BYTES is answered 431 before the server has read much more than the limit,
and the app refuses one under any server (checked in-process)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_app
from api.serving import server_options
from relight.core.config import Settings
from tests.hardening.live import serve, stream_until_answered

PIECE = b"a" * 16384
PIECES = 100 * 1024 * 1024 // len(PIECE)  # a 100 MB header, if the server took it all


@pytest.fixture
async def port(settings: Settings, clean_state: None) -> AsyncIterator[int]:
    options = {**server_options(settings), "loop": "asyncio", "log_config": None}
    async with serve(create_app(settings), **options) as bound:
        yield bound


async def test_a_huge_header_is_a_431_before_it_is_all_sent(port: int, settings: Settings) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: "

    streamed = await stream_until_answered(port, head, PIECE, PIECES)

    assert streamed.status == 431, streamed.answer[:300]
    assert str(settings.max_header_bytes).encode() in streamed.answer
    assert streamed.sent < len(PIECE) * PIECES // 10


async def test_many_headers_over_the_limit_are_a_431(port: int, settings: Settings) -> None:
    many = "".join(f"X-H{i}: {'v' * 100}\r\n" for i in range(settings.max_header_bytes // 100))
    head = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n".encode()

    streamed = await stream_until_answered(port, head, b"", 0)

    assert streamed.status == 431, streamed.answer[:300]


async def test_a_head_within_the_limit_is_served_and_the_connection_kept(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(3):
            response = await client.get("/healthz", headers={"X-Big": "b" * 16_000})
            assert response.status_code == 200, response.text


async def test_the_app_refuses_a_head_over_the_limit_under_any_server(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.get("/healthz", headers={"X-Huge": "a" * settings.max_header_bytes})

    assert response.status_code == 431, response.text
    body = response.json()
    assert body["code"] == "headers_too_large"
    assert set(body) >= {"error", "code", "request_id"}
