"""Which nodes workers know: static ones from settings, live ones from heartbeats."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from relight.core.config import Settings
from relight.nodes import registry
from relight.nodes.registry import NodeInfo
from tests.waiting import wait_until


@pytest.fixture
async def namespace(redis: Redis) -> AsyncIterator[str]:
    name = f"relight:test-registry:{uuid.uuid4().hex[:8]}"
    yield name
    keys = [key async for key in redis.scan_iter(match=f"{name}*")]
    if keys:
        await redis.delete(*keys)


def test_static_nodes_parse_with_optional_capacity() -> None:
    settings = Settings(gpu_nodes="http://gpu-1:9000=2, http://gpu-2:9000/ ,")
    assert settings.static_gpu_nodes == [("http://gpu-1:9000", 2), ("http://gpu-2:9000", 1)]
    nodes = registry.static_nodes(settings.static_gpu_nodes)
    assert [(n.id, n.capacity, n.source) for n in nodes] == [
        ("http://gpu-1:9000", 2, "static"),
        ("http://gpu-2:9000", 1, "static"),
    ]


@pytest.mark.parametrize("value", ["gpu-1:9000", "http://gpu-1:9000=0", "http://gpu-1:9000=x"])
def test_malformed_static_nodes_are_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="GPU node"):
        Settings(gpu_nodes=value)


async def test_heartbeats_come_and_go(redis: Redis, namespace: str) -> None:
    node = NodeInfo(id="n1", url="http://10.0.0.5:9000", capacity=2, engine="classic")
    assert not await registry.has_live_nodes(redis, namespace)
    await registry.publish_heartbeat(redis, namespace, node, ttl_s=60)
    assert await registry.live_nodes(redis, namespace) == [node]
    assert await registry.has_live_nodes(redis, namespace)

    async def gone() -> bool:
        return await registry.live_nodes(redis, namespace) == []

    # A last beat with a short TTL, then none: gone once the TTL runs out.
    await registry.publish_heartbeat(redis, namespace, node, ttl_s=0.3)
    await wait_until(gone, timeout_s=10, what="a node whose heartbeat expired is gone")
    assert await registry.live_nodes(redis, namespace) == []
    await registry.publish_heartbeat(redis, namespace, node, ttl_s=5)
    await registry.withdraw(redis, namespace, "n1")
    assert await registry.live_nodes(redis, namespace) == []


def test_a_heartbeat_describes_the_static_node_at_the_same_url() -> None:
    static = registry.static_nodes([("http://gpu-1:9000", 1), ("http://gpu-2:9000", 1)])
    live = [NodeInfo(id="gpu-1", url="http://gpu-1:9000/", capacity=2, in_flight=1)]
    merged = registry.merge(static, live)
    assert sorted(node.id for node in merged) == ["gpu-1", "http://gpu-2:9000"]
