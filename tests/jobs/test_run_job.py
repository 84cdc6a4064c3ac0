"""Running jobs: submitted through the API, run by the real arq worker, checked via API and DB.

Covers variations, determinism per seed, output formats and sizes, at-least-once delivery
(idempotent runs, duplicate enqueues), retries with refunds, fetch timeouts, recorded timings
and canceled jobs.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
from arq.connections import ArqRedis
from fastapi import FastAPI
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.state import AppState
from inference.engines.classic import ClassicEngine
from relight.backends.local import LocalBackend
from relight.core.config import Settings
from relight.core.models import Job, JobOutput, JobStatus
from relight.core.params import Backend, output_size
from relight.core.storage import FileSystemStorage
from relight.credits.service import get_balance
from relight.jobs.execution import JobRunner
from relight.jobs.queue import RUN_JOB_TASK
from tests.conftest import RunWorker, TenantKey, example_base64
from tests.fakes.image_server import ImageServer
from tests.helpers import assert_never_ran, cancel, get_record, get_status, local_path, submit
from worker.tasks import run_job

START_CREDITS = 1000
TIMING_KEYS = (
    "queue_wait_ms",
    "fetch_ms",
    "decode_ms",
    "engine_ms",
    "encode_ms",
    "store_ms",
    "total_ms",
)
# A small render, for tests where the size does not matter.
SMALL: dict[str, Any] = {"width": 256, "height": 320, "highres_scale": 1.0}

Sessions = async_sessionmaker[AsyncSession]


def body(subject_image: str | None = None, /, **overrides: Any) -> dict[str, Any]:
    return {
        "prompt": "cat, photoshoot, 4k",
        "subject_image": subject_image if subject_image is not None else example_base64(),
        "seed": 7,
        **overrides,
    }


async def download(client: httpx.AsyncClient, output: dict[str, Any]) -> httpx.Response:
    """Follow an output's signed URL, without the API key, as a browser would."""
    response = await client.get(local_path(str(output["url"])))
    assert response.status_code == 200, response.text
    return response


def assert_failed(record: dict[str, Any], code: str, attempts: int) -> None:
    """The record of a request that failed with error `code` after `attempts` attempts."""
    assert record["status"] == "FAILED"
    assert record["attempts"] == attempts
    assert record["error_code"] == code


async def balance_of(sessionmaker: Sessions, tenant: TenantKey) -> int:
    async with sessionmaker() as session:
        return await get_balance(session, tenant.tenant_id)


async def output_rows(sessionmaker: Sessions, request_id: str) -> int:
    async with sessionmaker() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(JobOutput)
            .where(JobOutput.job_id == uuid.UUID(request_id))
        )
    return int(count or 0)


async def job_row(sessionmaker: Sessions, request_id: str) -> Job:
    async with sessionmaker() as session:
        job = await session.get(Job, uuid.UUID(request_id))
    assert job is not None
    return job


@pytest.fixture
async def runner(
    settings: Settings, sessionmaker: Sessions, redis: ArqRedis
) -> AsyncIterator[JobRunner]:
    """A JobRunner wired as `worker.settings.build_worker`'s startup wires it."""
    executor = ThreadPoolExecutor(max_workers=settings.local_engine_threads)
    try:
        async with httpx.AsyncClient(follow_redirects=True, max_redirects=3) as http:
            yield JobRunner(
                settings=settings,
                sessionmaker=sessionmaker,
                storage=FileSystemStorage(settings.storage_dir),
                redis=redis,
                enqueuer=redis,
                http=http,
                backends={Backend.LOCAL: LocalBackend(ClassicEngine(), executor)},
            )
    finally:
        executor.shutdown(wait=True)


# --- outputs ----------------------------------------------------------------------------------


async def test_three_images_are_three_distinct_downloadable_outputs(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    sessionmaker: Sessions,
) -> None:
    request_id = await submit(client, tenant, body(number_of_images=3))

    await run_worker()

    record = await get_record(client, tenant, request_id)
    assert record["status"] == "COMPLETED"
    outputs = record["outputs"]
    assert [output["index"] for output in outputs] == [0, 1, 2]
    assert len({output["sha256"] for output in outputs}) == 3
    for output in outputs:
        assert (output["width"], output["height"]) == (768, 960)
        assert output["content_type"] == "image/webp"
        assert output["seed"] == 7
        response = await download(client, output)
        assert response.headers["content-type"] == "image/webp"
        assert hashlib.sha256(response.content).hexdigest() == output["sha256"]
        assert len(response.content) == output["bytes"]
        assert Image.open(io.BytesIO(response.content)).size == (768, 960)
    assert await output_rows(sessionmaker, request_id) == 3
    # Three default images cost three times the default price, and all of it is charged.
    assert record["credits"] == {"reserved": 30, "charged": 30}
    assert await balance_of(sessionmaker, tenant) == START_CREDITS - 30


async def test_same_seed_gives_identical_bytes_and_another_seed_does_not(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker
) -> None:
    first = await submit(client, tenant, body(seed=7, **SMALL))
    second = await submit(client, tenant, body(seed=7, **SMALL))
    other = await submit(client, tenant, body(seed=8, **SMALL))
    assert len({first, second, other}) == 3

    await run_worker()

    records = [await get_record(client, tenant, rid) for rid in (first, second, other)]
    assert [record["status"] for record in records] == ["COMPLETED"] * 3
    [a], [b], [c] = (record["outputs"] for record in records)
    assert a["sha256"] == b["sha256"]
    assert (await download(client, a)).content == (await download(client, b)).content
    assert c["sha256"] != a["sha256"]
    assert (await download(client, c)).content != (await download(client, a)).content
    assert [record["params"]["seed"] for record in records] == [7, 7, 8]


@pytest.mark.parametrize(
    ("output_format", "content_type", "pil_format", "requested", "expected_size"),
    [
        ("jpg", "image/jpeg", "JPEG", (320, 448, 2.0), (640, 896)),
        ("png", "image/png", "PNG", (256, 384, 1.0), (256, 384)),
        ("webp", "image/webp", "WEBP", (512, 256, 1.25), (640, 320)),
    ],
)
async def test_output_format_and_size_follow_the_params(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    output_format: str,
    content_type: str,
    pil_format: str,
    requested: tuple[int, int, float],
    expected_size: tuple[int, int],
) -> None:
    width, height, highres_scale = requested
    assert output_size(width, height, highres_scale) == expected_size
    request_id = await submit(
        client,
        tenant,
        body(
            output_format=output_format,
            output_quality=90,
            width=width,
            height=height,
            highres_scale=highres_scale,
        ),
    )

    await run_worker()

    record = await get_record(client, tenant, request_id)
    assert record["status"] == "COMPLETED", record["error"]
    [output] = record["outputs"]
    assert output["content_type"] == content_type
    assert (output["width"], output["height"]) == expected_size
    response = await download(client, output)
    assert response.headers["content-type"] == content_type
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert (image.format, image.size) == (pil_format, expected_size)


async def test_jpeg_quality_changes_the_encoding(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker
) -> None:
    low = await submit(client, tenant, body(output_format="jpg", output_quality=10, **SMALL))
    high = await submit(client, tenant, body(output_format="jpg", output_quality=95, **SMALL))

    await run_worker()

    [low_output] = (await get_record(client, tenant, low))["outputs"]
    [high_output] = (await get_record(client, tenant, high))["outputs"]
    assert low_output["bytes"] < high_output["bytes"]


# --- at-least-once delivery -------------------------------------------------------------------


async def test_running_a_job_twice_runs_it_once_and_charges_once(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    runner: JobRunner,
    sessionmaker: Sessions,
) -> None:
    request_id = await submit(client, tenant, body(**SMALL))
    ctx: dict[str, Any] = {"runner": runner}

    assert await run_job(ctx, request_id) == "succeeded"
    first = await get_record(client, tenant, request_id)
    assert await run_job(ctx, request_id) == "skipped"

    record = await get_record(client, tenant, request_id)
    assert record == first
    assert record["status"] == "COMPLETED"
    assert record["attempts"] == 1
    assert len(record["outputs"]) == 1
    assert await output_rows(sessionmaker, request_id) == 1
    cost = record["credits"]["reserved"]
    assert cost > 0
    assert record["credits"]["charged"] == cost
    assert await balance_of(sessionmaker, tenant) == START_CREDITS - cost


async def test_two_concurrent_runs_of_one_job_do_the_work_once(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    runner: JobRunner,
    sessionmaker: Sessions,
) -> None:
    request_id = await submit(client, tenant, body(**SMALL))

    outcomes = await asyncio.gather(
        runner.run(uuid.UUID(request_id)), runner.run(uuid.UUID(request_id))
    )

    assert sorted(str(outcome.status) for outcome in outcomes) == ["None", "succeeded"]
    record = await get_record(client, tenant, request_id)
    assert (record["status"], record["attempts"]) == ("COMPLETED", 1)
    assert await output_rows(sessionmaker, request_id) == 1
    assert await balance_of(sessionmaker, tenant) == START_CREDITS - record["credits"]["charged"]


async def test_arq_refuses_a_second_copy_and_a_rerun_changes_nothing(
    app: FastAPI,
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    settings: Settings,
    sessionmaker: Sessions,
) -> None:
    state: AppState = app.state.relight
    request_id = await submit(client, tenant, body(**SMALL))

    # The gateway enqueued it under its own id; a second copy is refused while it waits.
    duplicate = await state.redis.enqueue_job(
        RUN_JOB_TASK, request_id, _job_id=request_id, _queue_name=settings.queue_name
    )
    assert duplicate is None

    await run_worker()
    done = await get_record(client, tenant, request_id)
    assert done["status"] == "COMPLETED"
    balance = await balance_of(sessionmaker, tenant)
    assert balance == START_CREDITS - done["credits"]["charged"]

    # Once finished (results are not kept), arq may run the id again: nothing changes.
    again = await state.redis.enqueue_job(
        RUN_JOB_TASK, request_id, _job_id=request_id, _queue_name=settings.queue_name
    )
    assert again is not None
    await run_worker()

    # The same record, but for the signed URLs' expiry, which counts from the time of reading.
    assert unsigned(await get_record(client, tenant, request_id)) == unsigned(done)
    assert await output_rows(sessionmaker, request_id) == 1
    assert await balance_of(sessionmaker, tenant) == balance


def unsigned(record: dict[str, Any]) -> Any:
    """`record` with the `expires` and `signature` of its signed URLs left out."""
    return orjson.loads(
        re.sub(rb"\?expires=\d+&signature=[A-Za-z0-9_\-=]+", b"", orjson.dumps(record))
    )


# --- failures, retries and refunds ------------------------------------------------------------


async def test_upstream_500_is_retried_then_failed_and_refunded_once(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    settings: Settings,
    sessionmaker: Sessions,
    image_server: ImageServer,
) -> None:
    url = image_server.url("/broken")
    asked_before = image_server.requests.count("/broken")
    request_id = await submit(client, tenant, body(url, **SMALL))
    assert await balance_of(sessionmaker, tenant) < START_CREDITS

    await run_worker()

    record = await get_record(client, tenant, request_id)
    assert_failed(record, "input_fetch_failed", attempts=settings.job_max_attempts)
    assert "HTTP 500" in record["error"]
    assert record["outputs"] == []
    assert record["credits"]["charged"] == 0
    assert record["finished_at"] is not None
    assert image_server.requests.count("/broken") - asked_before == settings.job_max_attempts
    assert await balance_of(sessionmaker, tenant) == START_CREDITS
    status = await get_status(client, tenant, request_id)
    assert status["status"] == "FAILED"
    assert status["error_code"] == "input_fetch_failed"


@pytest.mark.parametrize(
    ("path", "code", "in_message"),
    [
        pytest.param("/missing", "input_fetch_failed", "HTTP 404", id="upstream-404"),
        pytest.param("/not-an-image", "invalid_image", None, id="not-an-image"),
    ],
)
async def test_a_url_that_is_missing_or_no_image_fails_at_once_and_is_refunded(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    sessionmaker: Sessions,
    image_server: ImageServer,
    path: str,
    code: str,
    in_message: str | None,
) -> None:
    request_id = await submit(client, tenant, body(image_server.url(path), **SMALL))

    await run_worker()

    record = await get_record(client, tenant, request_id)
    assert_failed(record, code, attempts=1)
    if in_message is not None:
        assert in_message in record["error"]
    assert record["credits"]["charged"] == 0
    assert await balance_of(sessionmaker, tenant) == START_CREDITS


async def test_a_slow_upstream_times_out_on_every_attempt(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    settings: Settings,
    sessionmaker: Sessions,
    image_server: ImageServer,
) -> None:
    previous = image_server.slow_s
    # It would answer after half a minute; each try gives up after fetch_timeout_s (2 s).
    answers_after_s = 30.0
    image_server.slow_s = answers_after_s
    try:
        request_id = await submit(client, tenant, body(image_server.url("/slow"), **SMALL))
        started = asyncio.get_running_loop().time()
        await run_worker()
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        image_server.slow_s = previous

    record = await get_record(client, tenant, request_id)
    assert_failed(record, "input_fetch_failed", attempts=settings.job_max_attempts)
    assert f"did not answer within {settings.fetch_timeout_s:g} s" in record["error"]
    # Each attempt gave up at the fetch timeout, not when the server finally answered: had any
    # of them waited for the answer, the whole run would have taken longer than that wait.
    assert elapsed < answers_after_s
    assert await balance_of(sessionmaker, tenant) == START_CREDITS


# --- what is recorded -------------------------------------------------------------------------


async def test_timings_times_and_seed_are_recorded(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    sessionmaker: Sessions,
    image_server: ImageServer,
) -> None:
    request_id = await submit(client, tenant, body(image_server.url("/chelsea.png"), seed=1234))

    await run_worker()

    record = await get_record(client, tenant, request_id)
    assert record["status"] == "COMPLETED"
    timings = record["timings"]
    for key in TIMING_KEYS:
        assert key in timings, f"{key} missing from {timings}"
        assert timings[key] >= 0, (key, timings[key])
    assert timings["total_ms"] >= timings["engine_ms"]
    created = datetime.fromisoformat(record["created_at"])
    started = datetime.fromisoformat(record["started_at"])
    finished = datetime.fromisoformat(record["finished_at"])
    assert created <= started <= finished
    assert record["params"]["seed"] == 1234
    assert record["outputs"][0]["seed"] == 1234
    assert record["backend"]["used"] == "local"
    assert record["progress"] == 1.0
    job = await job_row(sessionmaker, request_id)
    assert job.lease_expires_at is None
    assert job.attempts == 1
    status = await get_status(client, tenant, request_id)
    assert status["metrics"] == timings


async def test_a_random_seed_is_chosen_once_and_recorded(
    client: httpx.AsyncClient, tenant: TenantKey, run_worker: RunWorker
) -> None:
    request_id = await submit(client, tenant, body(seed=-1, **SMALL))
    queued = await get_record(client, tenant, request_id)
    chosen = queued["params"]["seed"]
    assert isinstance(chosen, int)
    assert chosen >= 0

    await run_worker()

    record = await get_record(client, tenant, request_id)
    assert record["params"]["seed"] == chosen
    assert record["outputs"][0]["seed"] == chosen


async def test_a_canceled_job_is_never_run(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    sessionmaker: Sessions,
) -> None:
    request_id = await submit(client, tenant, body(**SMALL))
    canceled = await cancel(client, tenant, request_id)
    assert canceled["status"] == "CANCELED"

    await run_worker()

    record = await get_record(client, tenant, request_id)
    assert_never_ran(record)
    assert record["credits"]["charged"] == 0
    assert await output_rows(sessionmaker, request_id) == 0
    job = await job_row(sessionmaker, request_id)
    assert (job.status, job.attempts) == (JobStatus.CANCELED.value, 0)
    assert await balance_of(sessionmaker, tenant) == START_CREDITS


async def test_a_job_canceled_while_waiting_to_retry_is_not_run_again(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    runner: JobRunner,
    run_worker: RunWorker,
    sessionmaker: Sessions,
    image_server: ImageServer,
) -> None:
    request_id = await submit(client, tenant, body(image_server.url("/broken"), **SMALL))
    first = await runner.run(uuid.UUID(request_id))
    assert first.status is JobStatus.QUEUED
    assert first.retry_in_s is not None
    asked = image_server.requests.count("/broken")

    await cancel(client, tenant, request_id)
    assert await balance_of(sessionmaker, tenant) == START_CREDITS
    await run_worker()  # the gateway's copy of the job is still in the queue

    record = await get_record(client, tenant, request_id)
    assert (record["status"], record["attempts"]) == ("CANCELED", 1)
    assert record["credits"]["charged"] == 0
    assert image_server.requests.count("/broken") == asked
    assert await balance_of(sessionmaker, tenant) == START_CREDITS
