"""SIGTERM on a worker mid-job hands the job back; the next worker finishes it, once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.core.config import Settings
from scripts.stack import BIN
from tests.conftest import TenantKey
from tests.e2e.test_live_stack import _environment
from tests.fakes.image_server import ImageServer

pytestmark = pytest.mark.slow

WORKER = str(BIN / "relight-worker")


async def _job_row(engine: AsyncEngine, request_id: str) -> tuple[str, int]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT status, attempts FROM job WHERE id = :id"), {"id": request_id}
            )
        ).one()
    return str(row.status), int(row.attempts)


async def _wait_for_status(engine: AsyncEngine, request_id: str, wanted: str) -> None:
    for _ in range(200):
        if (await _job_row(engine, request_id))[0] == wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job never reached {wanted}")


def _worker_env(settings: Settings, grace_s: str) -> dict[str, str]:
    env = _environment(
        settings,
        Path(settings.storage_dir),
        RELIGHT_FETCH_TIMEOUT_S="30",
        RELIGHT_SHUTDOWN_GRACE_S=grace_s,
    )
    env["RELIGHT_QUEUE_NAME"] = settings.queue_name  # the queue the ASGI client submits to
    return env


async def _submit_slow(
    client: httpx.AsyncClient, tenant: TenantKey, image_server: ImageServer
) -> str:
    """Submit a request whose subject image the image server serves at its `slow_s` pace."""
    image_server.files["/slow"] = image_server.files["/chelsea.png"]
    submitted = await client.post(
        "/v2/ic-light",
        headers=tenant.headers,
        json={"prompt": "cat", "subject_image": image_server.url("/slow")},
    )
    request_id: str = submitted.json()["request_id"]
    return request_id


async def _sigterm_once_running(
    env: dict[str, str], engine: AsyncEngine, request_id: str, log_path: Path
) -> None:
    """Start a worker, SIGTERM it once the job runs, and check it exits cleanly."""
    with log_path.open("wb") as log:
        worker = await asyncio.create_subprocess_exec(
            WORKER, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        await _wait_for_status(engine, request_id, "running")
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 20) == 0


async def test_sigterm_hands_the_running_job_back(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    image_server: ImageServer,
    settings: Settings,
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    env = _worker_env(settings, grace_s="1")
    original_delay = image_server.slow_s
    image_server.slow_s = 30.0
    try:
        request_id = await _submit_slow(client, tenant, image_server)
        await _sigterm_once_running(env, engine, request_id, tmp_path / "worker-1.log")
        assert await _job_row(engine, request_id) == ("queued", 0)
    finally:
        image_server.slow_s = original_delay

    # The handed-back job runs from the start: it fetches the image again, quickly this time.
    image_server.slow_s = 0.0
    try:
        with (tmp_path / "worker-2.log").open("wb") as log:
            worker = await asyncio.create_subprocess_exec(
                WORKER, env=env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                await _wait_for_status(engine, request_id, "succeeded")
            finally:
                worker.terminate()
                await asyncio.wait_for(worker.wait(), 20)
    finally:
        image_server.slow_s = original_delay
    record = (await client.get(f"/v2/requests/{request_id}", headers=tenant.headers)).json()
    assert record["status"] == "COMPLETED"
    assert record["attempts"] == 1
    assert record["credits"] == {"reserved": 10, "charged": 10}


async def test_sigterm_lets_a_short_job_finish_within_the_grace(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    image_server: ImageServer,
    settings: Settings,
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    env = _worker_env(settings, grace_s="10")
    original_delay = image_server.slow_s
    image_server.slow_s = 1.5  # still fetching when SIGTERM comes, done well within the grace
    try:
        request_id = await _submit_slow(client, tenant, image_server)
        await _sigterm_once_running(env, engine, request_id, tmp_path / "worker.log")
    finally:
        image_server.slow_s = original_delay
    assert await _job_row(engine, request_id) == ("succeeded", 1)
