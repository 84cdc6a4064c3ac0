"""Redis drops a worker's connections (as in a Redis restart): the worker reconnects and
keeps running jobs."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.config import Settings
from tests.conftest import TenantKey
from tests.e2e.test_live_stack import _environment
from tests.e2e.test_worker_shutdown import WORKER, _wait_for_status
from tests.helpers import png_bytes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ss") is None, reason="needs `ss` (iproute2) to find sockets"),
]


async def redis_clients_of(pid: int) -> list[str]:
    """`ip:port` of every connection the process holds to Redis."""
    listing = await asyncio.create_subprocess_exec(
        "ss", "-tnp", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    out, _ = await listing.communicate()
    return [
        line.split()[3]
        for line in out.decode().splitlines()
        if f"pid={pid}," in line and ":6379" in line.split()[4]
    ]


async def test_a_worker_survives_its_redis_connections_being_dropped(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    settings: Settings,
    engine: AsyncEngine,
    redis: ArqRedis,
    tmp_path: Path,
) -> None:
    env = _environment(settings, Path(settings.storage_dir))
    env["RELIGHT_QUEUE_NAME"] = settings.queue_name
    with (tmp_path / "worker.log").open("wb") as log:
        worker = await asyncio.create_subprocess_exec(
            WORKER, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        for _ in range(100):
            addresses = await redis_clients_of(worker.pid)
            if addresses:
                break
            await asyncio.sleep(0.1)
        assert addresses, "the worker never connected to Redis"
        for address in addresses:
            await redis.client_kill_filter(addr=address)
        await asyncio.sleep(0.5)

        submitted = await client.post(
            "/v2/ic-light",
            headers=tenant.headers,
            json={"prompt": "cat", "subject_image": base64.b64encode(png_bytes()).decode()},
        )
        await _wait_for_status(engine, submitted.json()["request_id"], "succeeded")
        assert worker.returncode is None  # still running
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 30)
