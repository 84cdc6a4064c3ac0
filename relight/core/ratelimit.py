"""Per-tenant rate limits in Redis: GCRA in one Lua script, so every check is atomic.

A tenant may send `burst` requests at once and `requests_per_minute` sustained. The script
uses Redis' clock, so any number of API processes share one view of time. When Redis does not
answer the limiter fails open (the request goes through, a warning is logged): Redis holds
only counters, and refusing paid work because a counter is unreachable would be worse.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# KEYS[1]: the tenant's hash {tat, interval}. ARGV: emission interval (µs), burst, cost (0 =
# only look). Returns {allowed, remaining, reset_us, retry_after_us}.
# When the tenant's limits changed since the last request (another interval), what it has spent
# is re-measured in requests at the new rate: a raised limit lets the very next request through
# instead of waiting for the old, slower allowance to drain; a lowered one still counts them.
GCRA_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local capacity = interval * burst
local stored = redis.call('HMGET', KEYS[1], 'tat', 'interval')
local tat = tonumber(stored[1]) or now
local stored_interval = tonumber(stored[2]) or interval
if tat < now then tat = now end
if stored_interval ~= interval then
  tat = now + math.floor((tat - now) / stored_interval * interval)
end
local new_tat = tat + interval * cost
if new_tat - capacity > now then
  local remaining = math.floor((capacity - (tat - now)) / interval)
  return {0, remaining, tat - now, new_tat - capacity - now}
end
if cost > 0 then
  redis.call('HSET', KEYS[1], 'tat', new_tat, 'interval', interval)
  redis.call('PEXPIRE', KEYS[1], math.ceil((new_tat - now) / 1000) + 1)
end
return {1, math.floor((capacity - (new_tat - now)) / interval), new_tat - now, 0}
"""


@dataclass(frozen=True)
class RateLimitPolicy:
    requests_per_minute: int
    burst: int
    # The policy's name in the RateLimit headers.
    name: str = "tenant"

    @property
    def interval_us(self) -> int:
        return max(1, round(60_000_000 / self.requests_per_minute))

    @property
    def window_s(self) -> int:
        """Seconds in which a spent burst refills: `burst` requests per `window_s`."""
        return max(1, math.ceil(self.burst * self.interval_us / 1_000_000))


@dataclass(frozen=True)
class RateLimitDecision:
    allowed: bool
    policy: RateLimitPolicy
    remaining: int
    reset_s: float
    retry_after_s: float

    def headers(self) -> dict[str, str]:
        """IETF draft RateLimit headers (structured fields), plus Retry-After when refused."""
        headers = {
            "RateLimit-Policy": f'"{self.policy.name}";q={self.policy.burst};'
            f"w={self.policy.window_s}",
            "RateLimit": f'"{self.policy.name}";r={max(0, self.remaining)};'
            f"t={math.ceil(self.reset_s)}",
        }
        if not self.allowed:
            # Rounded up: waiting this long really lets the next request through.
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


class RateLimiter:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(GCRA_SCRIPT)
        self._last_warning = 0.0

    async def check(
        self, key: str, policy: RateLimitPolicy, *, cost: int = 1
    ) -> RateLimitDecision | None:
        """Spend `cost` requests of `key`'s allowance (0 only reads it); None if Redis is down."""
        try:
            allowed, remaining, reset_us, retry_us = await self._script(
                keys=[f"{self._prefix}:gcra:{key}"], args=[policy.interval_us, policy.burst, cost]
            )
        except (RedisError, OSError):
            now = time.monotonic()
            if now - self._last_warning > 10:
                self._last_warning = now
                logger.warning("rate limiter unavailable (Redis); letting requests through")
            return None
        return RateLimitDecision(
            allowed=bool(allowed),
            policy=policy,
            remaining=int(remaining),
            reset_s=int(reset_us) / 1_000_000,
            retry_after_s=int(retry_us) / 1_000_000,
        )
