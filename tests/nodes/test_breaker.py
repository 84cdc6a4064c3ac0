"""The circuit breaker per node, shared by every worker through Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from relight.nodes.breaker import CircuitBreaker, CircuitState
from tests.conftest import TEST_REDIS_URL


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
    breaker = CircuitBreaker(redis, namespace, failures=3, cooldown_s=0.3)
    assert await breaker.state("n") is CircuitState.CLOSED
    assert not await breaker.record_failure("n")
    assert not await breaker.record_failure("n")
    assert await breaker.allows("n")
    assert await breaker.record_failure("n")
    assert await breaker.state("n") is CircuitState.OPEN
    assert not await breaker.allows("n")
    await asyncio.sleep(0.35)
    assert await breaker.state("n") is CircuitState.HALF_OPEN
    assert await breaker.allows("n")
    # One failure while half-open opens it again at once.
    assert await breaker.record_failure("n")
    assert await breaker.state("n") is CircuitState.OPEN
    await asyncio.sleep(0.35)
    await breaker.record_success("n")
    assert await breaker.state("n") is CircuitState.CLOSED


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
