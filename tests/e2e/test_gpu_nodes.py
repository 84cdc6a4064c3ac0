"""Two real `relight-node` processes (capacity 1, classic engine) behind real `relight-api` and
`relight-worker` processes: never more than one request per node, whatever the queue holds;
a node killed mid-job costs the job nothing but time, and it is charged once."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis as sync_redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.core.config import Settings
from relight.nodes.slots import slot_index_key, slots_key
from scripts.stack import BIN, free_port, wait_ready
from tests.conftest import MakeTenant, TenantKey, example_base64
from tests.e2e.test_live_stack import _environment
from tests.nodes.processes import NodeProcess, node_process

pytestmark = pytest.mark.slow

TOKEN = "e2e-node-token-0123456789abcdef"
# A realistic slow request for the classic engine: 12 images of 2560×2560, a few seconds even
# on a quiet machine (a kill 0.3 s into it lands mid-render).
SLOW = {
    "prompt": "portrait, warm sunset light",
    "width": 1024,
    "height": 1024,
    "highres_scale": 2.5,
    "number_of_images": 12,
    "backend": "gpu",
    "output_format": "jpg",
}


@dataclass
class Stack:
    url: str
    nodes: list[NodeProcess]
    namespace: str


@pytest.fixture
def stack(settings: Settings, migrated: None, clean_state: None, tmp_path: Path) -> Iterator[Stack]:
    namespace = f"relight:test-e2e-gpu:{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = _environment(
        settings,
        tmp_path / "storage",
        RELIGHT_QUEUE_NAME=settings.queue_name + ":gpu",
        RELIGHT_GPU_NAMESPACE=namespace,
        RELIGHT_NODE_TOKEN=TOKEN,
        RELIGHT_WORKER_CONCURRENCY="4",
        RELIGHT_GPU_WAIT_S="60",
        RELIGHT_RETRY_BACKOFF_S="0.1",
        RELIGHT_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    with ExitStack() as stack:
        nodes = [
            stack.enter_context(
                node_process(
                    f"gpu-{index}",
                    redis_url=settings.redis_url,
                    namespace=namespace,
                    log_dir=logs,
                    token=TOKEN,
                    capacity=1,
                )
            )
            for index in (1, 2)
        ]
        processes = []
        for name, command in (
            ("api", [str(BIN / "relight-api"), "--port", str(port)]),
            ("worker", [str(BIN / "relight-worker")]),
        ):
            log = stack.enter_context((logs / f"{name}.log").open("wb"))
            processes.append(
                subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
        try:
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=url, timeout=1) as probe:
                wait_ready(probe, processes[0])
            yield Stack(url=url, nodes=nodes, namespace=namespace)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=20)
            client = sync_redis.Redis.from_url(settings.redis_url)
            keys = list(client.scan_iter(match=f"{namespace}*"))
            if keys:
                client.delete(*keys)
            client.close()


@pytest.fixture
async def tenant(make_tenant: MakeTenant) -> TenantKey:
    return await make_tenant("gpu-e2e", credits=10_000)


@dataclass
class LoadSampler:
    """Samples every node's own in-flight count (its /healthz) and the slots held in Redis."""

    stack: Stack
    redis_url: str
    in_flight: dict[str, list[int]] = field(default_factory=dict)
    slots: dict[str, list[int]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = sync_redis.Redis.from_url(self.redis_url)
        try:
            while not self.stop.is_set():
                for node in self.stack.nodes:
                    if node.process.poll() is None:
                        try:
                            count = int(str(node.health()["in_flight"]))
                        except httpx.TransportError:
                            continue
                        self.in_flight.setdefault(node.node_id, []).append(count)
                    key = slots_key(self.stack.namespace, node.node_id)
                    now_ms = int(time.time() * 1000)
                    held = cast(int, client.zcount(key, now_ms, "+inf"))
                    self.slots.setdefault(node.node_id, []).append(held)
                time.sleep(0.03)
        finally:
            client.close()


def submit(stack: Stack, tenant: TenantKey, seed: int) -> str:
    body = {**SLOW, "subject_image": example_base64(), "seed": seed}
    response = httpx.post(f"{stack.url}/v2/ic-light", headers=tenant.headers, json=body, timeout=30)
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id


def record_of(stack: Stack, tenant: TenantKey, request_id: str) -> dict[str, Any]:
    response = httpx.get(f"{stack.url}/v2/requests/{request_id}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def wait_finished(
    stack: Stack, tenant: TenantKey, request_ids: list[str], timeout_s: float = 120
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        records = [record_of(stack, tenant, request_id) for request_id in request_ids]
        if all(record["status"] not in ("QUEUED", "PROCESSING") for record in records):
            return records
        assert time.monotonic() < deadline, [record["status"] for record in records]
        time.sleep(0.1)


def credits_of(stack: Stack, tenant: TenantKey) -> float:
    response = httpx.get(f"{stack.url}/v1/get-user-credits", headers=tenant.headers)
    return float(response.json()["credits"])


def rendering_node(stack: Stack, timeout_s: float = 30) -> NodeProcess:
    """The node whose /healthz shows a request in flight (waits for one)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for node in stack.nodes:
            if node.health()["in_flight"] == 1:
                return node
        time.sleep(0.02)
    raise AssertionError("no node picked the job up")


async def ledger_kinds(engine: AsyncEngine, request_id: str) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT kind FROM credit_entry WHERE job_id = :id ORDER BY id"),
            {"id": request_id},
        )
        return [str(row.kind) for row in rows]


async def test_two_nodes_of_capacity_one_never_run_two_requests_each(
    stack: Stack, tenant: TenantKey, settings: Settings, engine: AsyncEngine
) -> None:
    sampler = LoadSampler(stack, settings.redis_url)
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    try:
        ids = [await asyncio.to_thread(submit, stack, tenant, seed) for seed in (1, 2, 3)]
        records = await asyncio.to_thread(wait_finished, stack, tenant, ids)
    finally:
        sampler.stop.set()
        await asyncio.to_thread(thread.join)
    for record in records:
        assert record["status"] == "COMPLETED", record
        assert record["backend"]["used"] == "gpu"
        assert len(record["outputs"]) == 12
        # The third waited for a slot; waiting is not a failed try.
        assert record["attempts"] == 1
    assert {record["backend"]["node"] for record in records} == {"gpu-1", "gpu-2"}
    for node_id in ("gpu-1", "gpu-2"):
        assert max(sampler.in_flight[node_id]) == 1, sampler.in_flight[node_id]
        assert max(sampler.slots[node_id]) == 1, sampler.slots[node_id]
    # Both nodes were busy at once at some point: the work was spread, not serialised.
    busy_together = any(
        a == b == 1 for a, b in zip(sampler.slots["gpu-1"], sampler.slots["gpu-2"], strict=False)
    )
    assert busy_together
    for request_id in ids:
        assert await ledger_kinds(engine, request_id) == ["reserve", "charge"]
    client = sync_redis.Redis.from_url(settings.redis_url)
    try:
        assert client.smembers(slot_index_key(stack.namespace)) == {b"gpu-1", b"gpu-2"}
    finally:
        client.close()


async def test_a_node_killed_mid_job_and_the_job_finishes_on_the_other(
    stack: Stack, tenant: TenantKey, engine: AsyncEngine
) -> None:
    balance_before = await asyncio.to_thread(credits_of, stack, tenant)
    request_id = await asyncio.to_thread(submit, stack, tenant, 7)
    # Wait until a node is rendering it, then kill that node without warning.
    victim = await asyncio.to_thread(rendering_node, stack)
    await asyncio.sleep(0.3)  # mid-render
    victim.kill()
    [survivor] = [node for node in stack.nodes if node is not victim]

    [record] = await asyncio.to_thread(wait_finished, stack, tenant, [request_id])
    assert record["status"] == "COMPLETED", record
    assert record["backend"]["node"] == survivor.node_id
    assert len(record["outputs"]) == 12
    calls = [call for attempt in record["backend"]["attempts"] for call in attempt["calls"]]
    assert [(call["node"], call["outcome"]) for call in calls] == [
        (victim.node_id, "lost"),
        (survivor.node_id, "ok"),
    ]
    # Charged once: one reservation that became one charge, and no refund.
    assert await ledger_kinds(engine, request_id) == ["reserve", "charge"]
    balance_after = await asyncio.to_thread(credits_of, stack, tenant)
    assert balance_before - balance_after == record["credits"]["charged"]
