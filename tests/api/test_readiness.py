"""`/readyz` follows what the api needs to take requests: Postgres. Redis going away is
reported but leaves the api ready (the limiter fails open, jobs wait in Postgres for the
sweeper), so a Redis blip does not take every replica out of the Service at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from api.app import create_app
from relight.core.config import Settings


class TcpRelay:
    """A real TCP relay on 127.0.0.1 in front of Redis that can be cut: `cut()` closes the
    listener and every relayed connection, as when Redis goes away."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


@pytest.fixture
async def redis_relay(settings: Settings) -> AsyncIterator[TcpRelay]:
    parts = urlsplit(settings.redis_url)
    relay = TcpRelay(parts.hostname or "127.0.0.1", parts.port or 6379)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.cut()


@pytest.fixture
async def client_behind_relay(
    settings: Settings, migrated: None, redis_relay: TcpRelay
) -> AsyncIterator[httpx.AsyncClient]:
    parts = urlsplit(settings.redis_url)
    through_relay = parts._replace(netloc=f"127.0.0.1:{redis_relay.port}")
    app = create_app(settings.model_copy(update={"redis_url": urlunsplit(through_relay)}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_a_redis_outage_is_reported_but_leaves_the_api_ready(
    client_behind_relay: httpx.AsyncClient, redis_relay: TcpRelay
) -> None:
    before = await client_behind_relay.get("/readyz")
    assert before.status_code == 200, before.text
    assert before.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}

    await redis_relay.cut()
    after = await client_behind_relay.get("/readyz")

    assert after.status_code == 200, after.text
    body = after.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("unavailable")
