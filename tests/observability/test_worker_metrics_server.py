"""The worker's metrics server: `GET /metrics` (with the queue depth read from Redis when
scraped), `/healthz`, nothing else; a port already taken is logged, not fatal."""

from __future__ import annotations

import asyncio
import logging
import socket

import httpx
import pytest
from arq.connections import ArqRedis

from relight.core.config import Settings
from relight.core.ids import uuid7
from relight.jobs.queue import enqueue_run
from tests.observability.conftest import free_port, scrape
from worker.settings import start_metrics_server


@pytest.mark.usefixtures("clean_state")
async def test_serves_metrics_with_the_queue_depth_and_nothing_else(
    metrics_settings: Settings, redis: ArqRedis
) -> None:
    ctx: dict[str, object] = {"redis": redis}
    await start_metrics_server(ctx, metrics_settings)
    base = f"http://127.0.0.1:{metrics_settings.worker_metrics_port}"
    try:
        await enqueue_run(redis, metrics_settings.queue_name, uuid7())
        async with httpx.AsyncClient(base_url=base) as client:
            scraped = await scrape(client)
            health = await client.get("/healthz")
            missing = await client.get("/nope")
            posted = await client.post("/metrics")
            head = await client.head("/metrics")
        # A client that sends nonsense and goes away does not disturb the server.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", metrics_settings.worker_metrics_port
        )
        writer.write(b"\x00garbage\r\n\r\n")
        await writer.drain()
        assert b"200 OK" not in await reader.read()
        writer.close()
        async with httpx.AsyncClient(base_url=base) as client:
            again = await client.get("/metrics")
    finally:
        await ctx["metrics_server"].stop()  # type: ignore[attr-defined]

    assert scraped.value("relight_queue_depth") == 1
    assert health.status_code == 200
    assert missing.status_code == 404
    assert posted.status_code == 405
    assert head.status_code == 200
    assert head.content == b""
    assert again.status_code == 200


async def test_a_taken_port_is_logged_and_the_worker_goes_on(
    settings: Settings, redis: ArqRedis, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        ctx: dict[str, object] = {"redis": redis}
        busy = settings.model_copy(
            update={"worker_metrics_port": port, "worker_metrics_host": "127.0.0.1"}
        )
        with caplog.at_level(logging.WARNING):
            await start_metrics_server(ctx, busy)
    assert "metrics_server" not in ctx
    assert "worker metrics not served" in caplog.text


async def test_port_zero_serves_nothing(settings: Settings, redis: ArqRedis) -> None:
    ctx: dict[str, object] = {"redis": redis}
    await start_metrics_server(ctx, settings)  # the test settings say 0
    assert "metrics_server" not in ctx
