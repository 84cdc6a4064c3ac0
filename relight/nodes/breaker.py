"""A circuit breaker per node, shared by every worker through Redis.

Shared rather than per worker: when a node dies, the first worker to notice opens the circuit
for all of them, so the others skip it at once instead of each paying a connection timeout
(and each failing a job's try) before learning the same thing.

States: *closed* (calls go through; failures are counted, a success resets the count);
*open* after `failures` consecutive failures (the node is skipped for `cooldown_s`); then
*half-open*: calls go through again (at most the node's capacity, as slots still apply) and the
first failure opens the circuit again at once, the first success closes it.
"""

from __future__ import annotations

from enum import StrEnum

from redis.asyncio import Redis

# KEYS: failure counter, open marker. ARGV: threshold, cooldown ms, counter lifetime ms.
# Returns 1 when the circuit is (now) open.
_FAIL = """
local failures = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
if failures >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], failures, 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
"""


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self, redis: Redis, namespace: str, *, failures: int = 3, cooldown_s: float = 30.0
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.threshold = failures
        self.cooldown_ms = max(1, int(cooldown_s * 1000))

    def _failures_key(self, node_id: str) -> str:
        return f"{self.namespace}:breaker:failures:{node_id}"

    def _open_key(self, node_id: str) -> str:
        return f"{self.namespace}:breaker:open:{node_id}"

    async def state(self, node_id: str) -> CircuitState:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self._open_key(node_id))
            pipe.get(self._failures_key(node_id))
            is_open, failures = await pipe.execute()
        if is_open:
            return CircuitState.OPEN
        if failures is not None and int(failures) >= self.threshold:
            return CircuitState.HALF_OPEN
        return CircuitState.CLOSED

    async def allows(self, node_id: str) -> bool:
        """Whether a call to the node may be made now (closed or half-open)."""
        return await self.state(node_id) is not CircuitState.OPEN

    async def record_failure(self, node_id: str) -> bool:
        """Count a failed call; True when the circuit is open as a result."""
        # The count outlives the cooldown, so a half-open node that fails again re-opens.
        opened = await self.redis.eval(  # type: ignore[misc]
            _FAIL,
            2,
            self._failures_key(node_id),
            self._open_key(node_id),
            str(self.threshold),
            str(self.cooldown_ms),
            str(self.cooldown_ms * 10),
        )
        return bool(opened)

    async def record_success(self, node_id: str) -> None:
        await self.redis.delete(self._failures_key(node_id), self._open_key(node_id))
