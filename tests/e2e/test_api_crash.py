"""The API dies between a submit's commit and its enqueue: the job still runs, once.

`RELIGHT_FAULT_INJECTION=exit_before_enqueue` makes a real `relight-api` process exit right
after the commit, before it queues the job in Redis — the window an outbox exists for. The
sweeper finds the job `queued` in Postgres and queues it; a worker completes it.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.core.config import Settings
from scripts.stack import BIN, free_port
from tests.conftest import TenantKey
from tests.e2e.test_live_stack import _environment
from tests.helpers import png_bytes

pytestmark = pytest.mark.slow


async def _start(command: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as handle:
        return await asyncio.create_subprocess_exec(
            *command, env=env, stdout=handle, stderr=subprocess.STDOUT
        )


async def test_a_crash_between_commit_and_enqueue_loses_nothing(
    settings: Settings, engine: AsyncEngine, tenant: TenantKey, tmp_path: Path
) -> None:
    env = _environment(
        settings,
        tmp_path / "storage",
        RELIGHT_QUEUE_NAME=settings.queue_name + ":crash",
        RELIGHT_REQUEUE_GRACE_S="0.5",
        RELIGHT_WEBHOOK_SWEEP_INTERVAL_S="1",
    )
    port = free_port()
    api = await _start(
        [str(BIN / "relight-api"), "--port", str(port)],
        {**env, "RELIGHT_FAULT_INJECTION": "exit_before_enqueue"},
        tmp_path / "api.log",
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(100):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            image = base64.b64encode(png_bytes()).decode()
            with pytest.raises(httpx.TransportError):
                # The process dies before it answers: the client sees the connection drop.
                await client.post(
                    "/v2/ic-light",
                    headers=tenant.headers,
                    json={"prompt": "cat", "subject_image": image},
                )
        assert await asyncio.wait_for(api.wait(), 10) == 70
    finally:
        if api.returncode is None:
            api.kill()
            await api.wait()

    async with engine.connect() as connection:
        [(job_id, status)] = (await connection.execute(text("SELECT id, status FROM job"))).all()
    assert status == "queued"  # committed, never enqueued

    worker = await _start([str(BIN / "relight-worker")], env, tmp_path / "worker.log")
    try:
        for _ in range(200):
            async with engine.connect() as connection:
                row = (
                    await connection.execute(
                        text("SELECT status, attempts FROM job WHERE id = :id"), {"id": job_id}
                    )
                ).one()
            if row.status == "succeeded":
                break
            await asyncio.sleep(0.05)
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 20)
    assert (row.status, row.attempts) == ("succeeded", 1)
    async with engine.connect() as connection:
        kinds = (
            await connection.execute(
                text("SELECT kind FROM credit_entry WHERE job_id = :id ORDER BY id"),
                {"id": job_id},
            )
        ).scalars()
        assert list(kinds) == ["reserve", "charge"]
