"""The `gpu` backend end to end inside the test process: the real API and worker, real
`relight-node` processes (classic engine), slots and heartbeats in the real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.core.config import Settings
from relight.core.params import RelightParams
from relight.credits.pricing import price
from relight.nodes import slots
from relight.nodes.registry import NodeInfo
from scripts.stack import free_port
from tests.conftest import TenantKey
from tests.fakes.segmind import background_worker, relight_client, run_burst_worker
from tests.helpers import balance_of, fast_body, get_record, get_status
from tests.nodes.processes import NodeProcess, node_process

TOKEN = "gpu-backend-test-token-0123456789"
START = 1000


@pytest.fixture
async def namespace(redis: Redis) -> AsyncIterator[str]:
    name = f"relight:test-gpu:{uuid.uuid4().hex[:8]}"
    yield name
    keys = [key async for key in redis.scan_iter(match=f"{name}*")]
    if keys:
        await redis.delete(*keys)


@pytest.fixture
def node(settings: Settings, namespace: str, tmp_path: Path) -> Iterator[NodeProcess]:
    with node_process(
        "gpu-1",
        redis_url=settings.redis_url,
        namespace=namespace,
        log_dir=tmp_path,
        token=TOKEN,
        capacity=1,
    ) as process:
        yield process


def gpu_settings(settings: Settings, namespace: str, **overrides: object) -> Settings:
    return settings.model_copy(
        update={
            "gpu_namespace": namespace,
            "node_token": TOKEN,
            "gpu_wait_s": 10.0,
            "gpu_connect_timeout_s": 1.0,
            **overrides,
        }
    )


def cost(**params: object) -> int:
    body = fast_body(**params)
    del body["subject_image"]
    return price(RelightParams(**body), 10)


async def test_a_gpu_job_runs_on_a_discovered_node(
    settings: Settings,
    namespace: str,
    node: NodeProcess,
    tenant: TenantKey,
    engine: AsyncEngine,
    redis: Redis,
) -> None:
    config = gpu_settings(settings, namespace)
    async with relight_client(config) as client:
        response = await client.post(
            "/v2/ic-light", headers=tenant.headers, json=fast_body(backend="gpu", seed=99)
        )
        assert response.status_code == 202, response.text
        await run_burst_worker(config)
        record = await get_record(client, tenant, response.json()["request_id"])
    assert record["status"] == "COMPLETED", record
    assert (record["backend"]["used"], record["backend"]["node"]) == ("gpu", "gpu-1")
    [attempt] = record["backend"]["attempts"]
    [call] = attempt["calls"]
    assert (call["backend"], call["node"], call["outcome"], call["status_code"]) == (
        "gpu",
        "gpu-1",
        "ok",
        200,
    )
    [output] = record["outputs"]
    assert (output["width"], output["height"], output["seed"]) == (256, 256, 99)
    assert record["attempts"] == 1
    assert await balance_of(engine, tenant.tenant_id) == START - cost()
    assert await slots.slots_in_use(redis, namespace) == {"gpu-1": 0}


async def test_progress_moves_while_a_node_renders(
    settings: Settings, namespace: str, node: NodeProcess, tenant: TenantKey
) -> None:
    config = gpu_settings(settings, namespace)
    # Long enough (a few seconds) for several progress writes, which come at most every 0.5 s.
    slow = fast_body(backend="gpu", width=1024, height=1024, highres_scale=2.5, number_of_images=12)
    async with relight_client(config) as client, background_worker(config):
        response = await client.post("/v2/ic-light", headers=tenant.headers, json=slow)
        assert response.status_code == 202, response.text
        request_id = response.json()["request_id"]
        seen: list[float] = []
        for _ in range(600):
            status = await get_status(client, tenant, request_id)
            if status["status"] == "PROCESSING" and status["progress"] is not None:
                seen.append(status["progress"])
            if status["status"] == "COMPLETED":
                break
            await asyncio.sleep(0.05)
    assert status["status"] == "COMPLETED"
    assert any(0 < value < 1 for value in seen), seen
    assert seen == sorted(seen)


async def test_an_unreachable_static_node_is_skipped_within_the_try(
    settings: Settings, namespace: str, node: NodeProcess, tenant: TenantKey, engine: AsyncEngine
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = gpu_settings(
        settings, namespace, gpu_nodes=f"{dead}=4,{node.url}", gpu_discovery=False
    )
    async with relight_client(config) as client:
        ids = []
        for seed in (1, 2):
            response = await client.post(
                "/v2/ic-light", headers=tenant.headers, json=fast_body(backend="gpu", seed=seed)
            )
            assert response.status_code == 202, response.text
            ids.append(response.json()["request_id"])
        await run_burst_worker(config)
        records = [await get_record(client, tenant, request_id) for request_id in ids]
    for record in records:
        assert record["status"] == "COMPLETED", record
        assert record["attempts"] == 1
        # The static node's id is its URL.
        assert record["backend"]["node"] == node.url
    calls = [
        [(call["node"], call["outcome"]) for call in record["backend"]["attempts"][0]["calls"]]
        for record in records
    ]
    # Whichever job met the dead node first moved on to the live one in the same try.
    assert [(dead, "unreachable"), (node.url, "ok")] in calls, calls
    assert all(made[-1] == (node.url, "ok") for made in calls), calls
    assert await balance_of(engine, tenant.tenant_id) == START - 2 * cost()


async def test_auto_without_nodes_runs_elsewhere_and_gpu_is_refused(
    settings: Settings, namespace: str, tenant: TenantKey
) -> None:
    config = gpu_settings(settings, namespace)
    async with relight_client(config) as client:
        refused = await client.post(
            "/v2/ic-light", headers=tenant.headers, json=fast_body(backend="gpu")
        )
        accepted = await client.post("/v2/ic-light", headers=tenant.headers, json=fast_body())
        await run_burst_worker(config)
        record = await get_record(client, tenant, accepted.json()["request_id"])
    assert refused.status_code == 403
    assert refused.json()["code"] == "backend_not_allowed"
    assert record["status"] == "COMPLETED"
    # No node: `auto` never tried the gpu backend, so nothing was spent on it.
    assert [attempt["backend"] for attempt in record["backend"]["attempts"]] == ["local"]


async def hold_slot(redis: Redis, namespace: str, node: NodeProcess) -> slots.SlotLease:
    """Another worker's request on the node's only slot."""
    lease = await slots.acquire_least_loaded(
        redis, namespace, [NodeInfo(id=node.node_id, url=node.url, capacity=1)], ttl_s=30
    )
    assert lease is not None
    return lease


async def test_auto_fails_over_when_every_node_is_full(
    settings: Settings, namespace: str, node: NodeProcess, tenant: TenantKey, redis: Redis
) -> None:
    config = gpu_settings(settings, namespace)
    lease = await hold_slot(redis, namespace, node)
    async with relight_client(config) as client:
        response = await client.post("/v2/ic-light", headers=tenant.headers, json=fast_body())
        await run_burst_worker(config)
        record = await get_record(client, tenant, response.json()["request_id"])
    await slots.release(redis, lease)
    assert record["status"] == "COMPLETED"
    attempts = record["backend"]["attempts"]
    assert [(a["backend"], a["outcome"], a.get("code")) for a in attempts] == [
        ("gpu", "failed", "gpu_busy"),
        ("local", "ok", None),
    ]
    assert record["backend"]["used"] == "local"


async def test_an_explicit_gpu_job_waits_for_a_slot(
    settings: Settings, namespace: str, node: NodeProcess, tenant: TenantKey, redis: Redis
) -> None:
    config = gpu_settings(settings, namespace)
    lease = await hold_slot(redis, namespace, node)

    async def free_later() -> None:
        await asyncio.sleep(1.0)
        await slots.release(redis, lease)

    async with relight_client(config) as client:
        response = await client.post(
            "/v2/ic-light", headers=tenant.headers, json=fast_body(backend="gpu")
        )
        freeing = asyncio.create_task(free_later())
        await run_burst_worker(config)
        await freeing
        record = await get_record(client, tenant, response.json()["request_id"])
    assert record["status"] == "COMPLETED", record
    # The wait did not count as a failed try.
    assert record["attempts"] == 1
    assert [a["outcome"] for a in record["backend"]["attempts"]] == ["ok"]
    assert record["backend"]["node"] == "gpu-1"


async def test_a_wrong_token_fails_over_under_auto(
    settings: Settings, namespace: str, node: NodeProcess, tenant: TenantKey
) -> None:
    config = gpu_settings(settings, namespace, node_token="a-wrong-token-0123456789")
    async with relight_client(config) as client:
        response = await client.post("/v2/ic-light", headers=tenant.headers, json=fast_body())
        await run_burst_worker(config)
        record = await get_record(client, tenant, response.json()["request_id"])
    assert record["status"] == "COMPLETED"
    attempts = record["backend"]["attempts"]
    assert [(a["backend"], a.get("code")) for a in attempts] == [
        ("gpu", "upstream_auth"),
        ("local", None),
    ]
    assert attempts[0]["calls"][0]["status_code"] == 401


async def test_a_gpu_job_whose_only_node_is_down_fails_refunded_after_its_tries(
    settings: Settings, namespace: str, tenant: TenantKey, engine: AsyncEngine
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = gpu_settings(settings, namespace, gpu_nodes=dead, gpu_discovery=False)
    async with relight_client(config) as client:
        response = await client.post(
            "/v2/ic-light", headers=tenant.headers, json=fast_body(backend="gpu")
        )
        assert response.status_code == 202, response.text
        await run_burst_worker(config)
        record = await get_record(client, tenant, response.json()["request_id"])
    assert record["status"] == "FAILED"
    assert record["error_code"] == "upstream_unavailable"
    assert [a["backend"] for a in record["backend"]["attempts"]] == ["gpu"] * 3
    assert await balance_of(engine, tenant.tenant_id) == START
