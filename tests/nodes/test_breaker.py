"""The circuit breaker per node, shared by every worker through Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from relight.nodes.breaker import CircuitBreaker, CircuitState
from tests.conftest import TEST_REDIS_URL
from tests.waiting import wait_until


@pytest.fixture
async def namespace(redis: Redis) -> AsyncIterator[str]:
    name = f"relight:test-breaker:{uuid.uuid4().hex[:8]}"
    yield name
    keys = [key async for key in redis.scan_iter(match=f"{name}*")]
    if keys:
        await redis.delete(*keys)


async def test_opens_after_consecutive_failures_then_half_opens(
    redis: Redis, namespace: str
) -> None:
    # The cooldown is fixed by the failure that opens the circuit: `held` opens it for a minute,
    # so "still open" cannot be an accident of a slow machine; `brief` for half a second, to
    # watch a cooldown end (within its failure count's life, ten cooldowns: 5 s).
    held = CircuitBreaker(redis, namespace, failures=3, cooldown_s=60)
    brief = CircuitBreaker(redis, namespace, failures=3, cooldown_s=0.5)

    async def half_open() -> bool:
        return await held.state("n") is CircuitState.HALF_OPEN

    assert await held.state("n") is CircuitState.CLOSED
    assert not await held.record_failure("n")
    assert not await held.record_failure("n")
    assert await held.allows("n")
    assert await held.record_failure("n")
    assert await held.state("n") is CircuitState.OPEN
    assert not await held.allows("n")
    # Another failure, seen by a worker with the brief cooldown: open again, for half a second.
    assert await brief.record_failure("n")
    await wait_until(half_open, timeout_s=4, what="the circuit half-opens after the cooldown")
    assert await held.allows("n")
    # One failure while half-open opens it again at once.
    assert await held.record_failure("n")
    assert await held.state("n") is CircuitState.OPEN
    assert await brief.record_failure("n")
    await wait_until(half_open, timeout_s=4, what="the circuit half-opens after the cooldown")
    await held.record_success("n")
    assert await held.state("n") is CircuitState.CLOSED


async def test_a_success_resets_the_count(redis: Redis, namespace: str) -> None:
    breaker = CircuitBreaker(redis, namespace, failures=2, cooldown_s=5)
    await breaker.record_failure("n")
    await breaker.record_success("n")
    assert not await breaker.record_failure("n")
    assert await breaker.state("n") is CircuitState.CLOSED


async def test_workers_share_the_circuit(redis: Redis, namespace: str) -> None:
    """What one worker learns about a node, another acts on."""
    other_client = Redis.from_url(TEST_REDIS_URL)
    try:
        mine = CircuitBreaker(redis, namespace, failures=2, cooldown_s=5)
        theirs = CircuitBreaker(other_client, namespace, failures=2, cooldown_s=5)
        await mine.record_failure("n")
        await theirs.record_failure("n")
        assert not await mine.allows("n")
        assert not await theirs.allows("n")
        assert await theirs.allows("other-node")
    finally:
        await other_client.aclose()
