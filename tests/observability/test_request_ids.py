"""Request ids (issue 8, must show 4): every answer carries one (the client's X-Request-ID when
valid, else a new one), and the JSON log lines of one job, from the submit through the worker's
runs, retries and the sweeper to the webhook deliveries, all carry the submit's request id.

Segmind compatibility: `/v1/ic-light` answers `x-request-id` = the job's id (Segmind's own
header, which clients poll with); there the request id goes in `x-correlation-id`.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.core.logs import JsonFormatter
from relight.core.storage import FileSystemStorage
from relight.jobs.queue import enqueue_run
from tests.conftest import RunWorker, TenantKey
from tests.fakes.image_server import ImageServer
from tests.fakes.webhook_receiver import Reply, WebhookReceiver
from tests.helpers import fast_body, get_record
from worker.tasks import sweep

GENERATED = re.compile(r"^[0-9a-f]{32}$")
HOOK = "/hook"


class JsonLines(logging.Handler):
    """Formats each record as the deployed processes do, at the moment it is logged (when its
    context variables are set), and keeps the parsed lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.formatter_ = JsonFormatter()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.formatter_.format(record)))

    def about(self, job_id: str) -> list[dict[str, Any]]:
        """Our lines about a job: those with its `job_id` or naming it (arq's own lines, which
        name it in their text before any of our code runs, are left out)."""
        return [
            line
            for line in self.lines
            if not line["logger"].startswith("arq.")
            and (line.get("job_id") == job_id or job_id in line["message"])
        ]


@pytest.fixture
def json_lines(caplog: pytest.LogCaptureFixture) -> Iterator[JsonLines]:
    caplog.set_level(logging.INFO)
    handler = JsonLines()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


async def test_an_answer_returns_the_clients_request_id_or_a_new_one(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    mine = await client.get("/healthz", headers={"X-Request-ID": "checkout-42/a.b:c"})
    first = await client.get("/healthz")
    second = await client.get("/healthz")
    unauthorized = await client.get("/v2/requests", headers={"X-Request-ID": "bad-key-7"})

    assert mine.headers["x-request-id"] == "checkout-42/a.b:c"
    assert GENERATED.match(first.headers["x-request-id"])
    assert GENERATED.match(second.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert unauthorized.status_code == 401
    assert unauthorized.headers["x-request-id"] == "bad-key-7"


@pytest.mark.parametrize(
    "presented",
    ["x" * 129, "has space", "tab\there", "ünïcode", ""],
    ids=["too-long", "space", "control", "non-ascii", "empty"],
)
async def test_an_unusable_request_id_is_replaced(
    client: httpx.AsyncClient, presented: str
) -> None:
    response = await client.get("/healthz", headers=[(b"x-request-id", presented.encode())])
    assert response.status_code == 200
    assert GENERATED.match(response.headers["x-request-id"])


@pytest.mark.usefixtures("background_worker")
async def test_v1_keeps_segminds_x_request_id_and_returns_ours_as_correlation_id(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await client.post(
        "/v1/ic-light",
        headers={**tenant.headers, "X-Request-ID": "sync-trace-1"},
        json=fast_body(),
    )
    assert response.status_code == 200, response.text
    job_id = response.headers["x-request-id"]
    record = await get_record(client, tenant, job_id)  # Segmind's id: the job's
    assert record["request_id"] == job_id
    assert response.headers["x-correlation-id"] == "sync-trace-1"


def assert_one_request_id(lines: list[dict[str, Any]], request_id: str) -> None:
    missing = [line for line in lines if line.get("request_id") != request_id]
    assert not missing, f"lines without request id {request_id}: {missing}"


async def test_one_jobs_lines_share_the_submits_request_id_into_worker_and_webhooks(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    json_lines: JsonLines,
    redis: ArqRedis,
    settings: Settings,
) -> None:
    receiver.script(HOOK, [Reply(status=500)])  # the first delivery fails, the retry lands
    response = await client.post(
        "/v2/ic-light",
        headers={**tenant.headers, "X-Request-ID": "trace-abc-123"},
        json=fast_body(webhook_url=receiver.url(HOOK)),
    )
    assert response.status_code == 202, response.text
    assert response.headers["x-request-id"] == "trace-abc-123"
    job_id = response.json()["request_id"]
    await run_worker()
    await receiver.wait_for(HOOK, 2)
    # arq may run a finished job's id again: the run that finds nothing to do says so, too.
    assert await enqueue_run(redis, settings.queue_name, uuid.UUID(job_id))
    await run_worker()

    lines = json_lines.about(job_id)
    assert_one_request_id(lines, "trace-abc-123")
    loggers = [line["logger"] for line in lines]
    assert "api.routes.relight" in loggers  # the submit
    assert any("succeeded on local" in line["message"] for line in lines)  # the worker's run
    assert loggers.count("relight.webhooks.delivery") == 2  # both webhook attempts
    assert any("nothing to do" in line["message"] for line in lines)
    assert (await get_record(client, tenant, job_id))["status"] == "COMPLETED"


async def test_retries_and_the_sweeper_log_under_the_request_id_too(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    image_server: ImageServer,
    json_lines: JsonLines,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    redis: ArqRedis,
) -> None:
    response = await client.post(
        "/v2/ic-light",
        headers={**tenant.headers, "X-Request-ID": "trace-retry-9"},
        json=fast_body(subject_image=image_server.url("/broken"), webhook_url=receiver.url(HOOK)),
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["request_id"]
    # A worker took the job and died: its lease has expired. The sweeper takes it back.
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "update job set status = 'running', attempts = 1, "
                "lease_expires_at = now() - interval '1 second' where id = :id"
            ),
            {"id": job_id},
        )
    ctx = {
        "sessionmaker": sessionmaker,
        "settings": settings,
        "redis": redis,
        "storage": FileSystemStorage(settings.storage_dir),
    }
    await sweep(ctx)
    # The subject URL answers 500: the remaining attempts fail, the job fails and is refunded.
    await run_worker()
    await receiver.wait_for(HOOK, 1)

    lines = json_lines.about(job_id)  # before the test's own reads log lines of their own
    record = await get_record(client, tenant, job_id)
    assert record["status"] == "FAILED"
    assert_one_request_id(lines, "trace-retry-9")
    loggers = [line["logger"] for line in lines]
    assert "relight.jobs.sweeper" in loggers
    retries = [line for line in lines if "retrying" in line["message"]]
    assert len(retries) == settings.job_max_attempts - 2  # attempts 2 and 3; the last fails
    assert any(line["message"].startswith(f"job {job_id} failed") for line in lines)
    assert "relight.webhooks.delivery" in loggers
