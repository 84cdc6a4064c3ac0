"""Redis drops a worker's connections (as in a Redis restart): the worker reconnects and
keeps running jobs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from arq.connections import ArqRedis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.core.config import Settings
from tests.conftest import TenantKey
from tests.e2e.test_live_stack import _environment
from tests.e2e.test_worker_shutdown import WORKER, _wait_for_status
from tests.helpers import png_bytes

pytestmark = pytest.mark.slow


def _hex_address(field: str) -> str:
    """`0100007F:D2A6` (as /proc/net/tcp writes it) → `127.0.0.1:53926`."""
    address, port = field.split(":")
    octets = bytes.fromhex(address)[::-1]
    return f"{'.'.join(str(octet) for octet in octets)}:{int(port, 16)}"


def redis_clients_of(pid: int) -> list[str]:
    """`ip:port` of every IPv4 connection the process holds to Redis (port 6379), read from
    /proc: its socket inodes, matched against the kernel's TCP table."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    addresses = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and remote.endswith(":18EB"):  # 6379
            addresses.append(_hex_address(local))
    return addresses


async def drop_connections_of(redis: ArqRedis, pid: int) -> None:
    """Drop every connection the process holds to Redis (once it holds one)."""
    for _ in range(100):
        addresses = await asyncio.to_thread(redis_clients_of, pid)
        if addresses:
            break
        await asyncio.sleep(0.1)
    assert addresses, "the worker never connected to Redis"
    for address in addresses:
        with contextlib.suppress(RedisError):  # gone already
            await redis.client_kill_filter(addr=address)


@pytest.mark.parametrize("drops", [1, 150])
async def test_a_worker_survives_its_redis_connections_being_dropped(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    settings: Settings,
    engine: AsyncEngine,
    redis: ArqRedis,
    tmp_path: Path,
    drops: int,
) -> None:
    # Dropped again and again (150 times over a few seconds, while the sweep's cron run is
    # enqueued every second), a drop lands under a command Redis' client cannot retry on its
    # own (the WATCH of arq's enqueue): once, that ended the worker.
    env = _environment(settings, Path(settings.storage_dir))
    env["RELIGHT_QUEUE_NAME"] = settings.queue_name
    with (tmp_path / "worker.log").open("wb") as log:
        worker = await asyncio.create_subprocess_exec(
            WORKER, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        for _ in range(drops):
            await drop_connections_of(redis, worker.pid)
            await asyncio.sleep(0.02)
        assert worker.returncode is None, (tmp_path / "worker.log").read_text()[-3000:]
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
