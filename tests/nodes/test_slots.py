"""Slots in Redis: never above a node's capacity, whatever the concurrency; least-loaded
choice; a dead holder's slot frees itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from relight.nodes import slots
from relight.nodes.registry import NodeInfo
from tests.conftest import TEST_REDIS_URL
from tests.waiting import wait_until


@pytest.fixture
async def namespace(redis: Redis) -> AsyncIterator[str]:
    name = f"relight:test-slots:{uuid.uuid4().hex[:8]}"
    yield name
    keys = [key async for key in redis.scan_iter(match=f"{name}*")]
    if keys:
        await redis.delete(*keys)


def node(node_id: str, capacity: int) -> NodeInfo:
    return NodeInfo(id=node_id, url=f"http://{node_id}:9000", capacity=capacity)


async def test_concurrent_acquirers_never_exceed_capacity(redis: Redis, namespace: str) -> None:
    nodes = [node("a", 1), node("b", 2)]
    leases = await asyncio.gather(
        *(slots.acquire_least_loaded(redis, namespace, nodes, ttl_s=30) for _ in range(25))
    )
    granted = [lease for lease in leases if lease is not None]
    assert len(granted) == 3
    assert sorted(lease.node.id for lease in granted) == ["a", "b", "b"]
    assert await slots.slots_in_use(redis, namespace) == {"a": 1, "b": 2}
    await slots.release(redis, granted[0])
    assert sum((await slots.slots_in_use(redis, namespace)).values()) == 2


async def test_many_processes_worth_of_clients_share_the_cap(redis: Redis, namespace: str) -> None:
    """Acquirers on distinct connections (workers), interleaved with releases."""
    clients = [Redis.from_url(TEST_REDIS_URL) for _ in range(6)]
    peak = 0
    in_use = 0
    lock = asyncio.Lock()

    async def worker(client: Redis) -> None:
        nonlocal peak, in_use
        for _ in range(15):
            lease = await slots.acquire_least_loaded(client, namespace, [node("n", 2)], ttl_s=30)
            if lease is None:
                await asyncio.sleep(0.001)
                continue
            async with lock:
                in_use += 1
                peak = max(peak, in_use)
            counted = (await slots.slots_in_use(client, namespace))["n"]
            assert counted <= 2
            await asyncio.sleep(0.002)
            async with lock:
                in_use -= 1
            await slots.release(client, lease)

    try:
        await asyncio.gather(*(worker(client) for client in clients))
    finally:
        for client in clients:
            await client.aclose()
    assert peak == 2
    assert await slots.slots_in_use(redis, namespace) == {"n": 0}


async def test_least_loaded_node_is_chosen(redis: Redis, namespace: str) -> None:
    big, small = node("big", 4), node("small", 2)
    for _ in range(2):
        assert await slots.acquire_least_loaded(redis, namespace, [big], ttl_s=30) is not None
    # big is at 2/4, small at 0/2: small.
    first = await slots.acquire_least_loaded(redis, namespace, [big, small], ttl_s=30)
    assert first is not None
    assert first.node.id == "small"
    # Both at 1/2 load: the one with fewer in use (small, 1 against 2).
    second = await slots.acquire_least_loaded(redis, namespace, [big, small], ttl_s=30)
    assert second is not None
    assert second.node.id == "small"
    # small is full (2/2), big at 2/4: big.
    third = await slots.acquire_least_loaded(redis, namespace, [big, small], ttl_s=30)
    assert third is not None
    assert third.node.id == "big"
    assert await slots.slots_in_use(redis, namespace) == {"big": 3, "small": 2}


async def test_a_dead_holders_slot_expires_and_a_live_one_is_renewed(
    redis: Redis, namespace: str
) -> None:
    only = [node("solo", 1)]
    dead = await slots.acquire_least_loaded(redis, namespace, only, ttl_s=60, holder="dead")
    assert dead is not None
    assert await slots.acquire_least_loaded(redis, namespace, only, ttl_s=0.3) is None
    # Its last renewal, for 0.3 s; then the holder never renews again: it died.
    assert await slots.renew(redis, dead, 0.3)
    taken: list[slots.SlotLease] = []

    async def live_takes_it() -> bool:
        lease = await slots.acquire_least_loaded(redis, namespace, only, ttl_s=1, holder="live")
        if lease is not None:
            taken.append(lease)
        return lease is not None

    await wait_until(live_takes_it, timeout_s=10, what="the dead holder's slot frees itself")
    [live] = taken
    assert live is not None
    assert not await slots.renew(redis, dead, 0.3)  # too late for the dead one
    # Renewed, the live one holds the slot past its first TTL (1 s; the sleeps add up to 1.2 s).
    for _ in range(4):
        assert await slots.renew(redis, live, 60)
        await asyncio.sleep(0.3)
    assert await slots.acquire_least_loaded(redis, namespace, only, ttl_s=0.3) is None
    assert await slots.slots_in_use(redis, namespace) == {"solo": 1}
    await slots.release(redis, live)
    assert await slots.slots_in_use(redis, namespace) == {"solo": 0}


async def test_no_nodes_no_slot(redis: Redis, namespace: str) -> None:
    assert await slots.acquire_least_loaded(redis, namespace, [], ttl_s=30) is None
    assert await slots.slots_in_use(redis, namespace) == {}
