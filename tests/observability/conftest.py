"""Fixtures of the observability tests: a worker that serves its metrics, and a scrape parser."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.core.config import Settings
from tests.fakes.webhook_receiver import WebhookReceiver
from worker.settings import build_worker


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Scrape:
    """One scrape of a /metrics endpoint, parsed with prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when absent (a labelled counter not yet incremented)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str) -> float:
        """The sum of every sample of `name`, whatever its labels."""
        return sum(value for (sample, _), value in self.samples.items() if sample == name)


async def scrape(client: httpx.AsyncClient, url: str = "/metrics") -> Scrape:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


@pytest.fixture
def metrics_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"worker_metrics_port": free_port(), "worker_metrics_host": "127.0.0.1"}
    )


@pytest.fixture
async def metrics_worker(metrics_settings: Settings, engine: AsyncEngine) -> AsyncIterator[str]:
    """A background worker serving its metrics; answers the worker's metrics URL."""
    worker = build_worker(metrics_settings, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    url = f"http://127.0.0.1:{metrics_settings.worker_metrics_port}/metrics"
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            with contextlib.suppress(httpx.ConnectError):
                await client.get(url)
                break
            await asyncio.sleep(0.02)
    yield url
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await worker.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server
