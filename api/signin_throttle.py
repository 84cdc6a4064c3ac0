"""Throttling admin sign-in: per client address, at most RELIGHT_ADMIN_SIGNIN_FAILURES_PER_MINUTE
wrong admin tokens a minute (on the admin API's bearer token and on the operators' page's
sign-in form alike), then 429 with `Retry-After` until the minute is over.

Failures are counted in Redis, so every api replica shares one count per address: a fixed
window per address (`INCR`, expiring a minute after the first failure). Not the tenants' GCRA
limiter (`relight.core.ratelimit`): that one spends an allowance on each request it lets through,
while here only failures count and the gate must close before the token is looked at: once the
limit is reached, the right token is refused too until the window passes (else an attacker
would only have to keep guessing), and one address's success never clears another's count.

The client address is the ASGI client host. Behind a proxy, it is the address uvicorn puts
there: the proxy's own, unless uvicorn runs with `--proxy-headers` and the proxy is in
`--forwarded-allow-ips` (`FORWARDED_ALLOW_IPS`), in which case it is the client the proxy names.

When Redis does not answer the throttle fails open (a warning is logged): operators must be
able to sign in during the incident that took Redis down, and the token is long and compared
in constant time. Every failure and every refusal is logged as a warning with the client
address, never with the token presented.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from relight.core.config import Settings
from relight.core.errors import RelightError

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000

# KEYS[1]: the address's failure count. ARGV: the window (ms). Counts one failure, starting
# the window with the first; answers {failures in the window, ms left of it}.
RECORD_FAILURE_SCRIPT = """
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {failures, left}
"""


class TooManyFailedSignins(RelightError):
    status_code = 429
    code = "too_many_failed_signins"


@dataclass(frozen=True)
class SigninRefusal:
    """The address has spent its failures: refuse every sign-in for `retry_after_s`."""

    retry_after_s: int

    def error(self) -> TooManyFailedSignins:
        return TooManyFailedSignins(
            f"too many failed admin sign-ins from this address; retry after {self.retry_after_s} s",
            extra={"headers": {"Retry-After": str(self.retry_after_s)}},
        )


def client_address(client: tuple[str, int] | list[object] | None) -> str:
    """The ASGI scope's client host (`unknown` when the server gave none)."""
    if not client:
        return "unknown"
    return str(client[0])


class SigninThrottle:
    """Counts failed admin sign-ins per client address in Redis (see the module docstring)."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self._limit = settings.admin_signin_failures_per_minute
        self._prefix = f"{settings.queue_name}:admin-signin:failures:"
        self._redis = redis
        self._record = redis.register_script(RECORD_FAILURE_SCRIPT)

    async def refusal(self, address: str, where: str) -> SigninRefusal | None:
        """A refusal when `address` already failed the limit this window (logged), else None."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self._prefix + address)
                pipe.pttl(self._prefix + address)
                failures, left_ms = await pipe.execute()
        except (RedisError, OSError):
            logger.warning("admin sign-in throttle unavailable (Redis); not throttling %s", address)
            return None
        if failures is None or int(failures) < self._limit:
            return None
        return self._refused(address, where, int(left_ms))

    async def record_failure(self, address: str, where: str) -> SigninRefusal | None:
        """Count a wrong token from `address` (logged); a refusal when it went over the limit
        (concurrent guesses that all passed `refusal` are refused here)."""
        logger.warning("admin sign-in failed on the %s from %s", where, address)
        try:
            failures, left_ms = await self._record(keys=[self._prefix + address], args=[WINDOW_MS])
        except (RedisError, OSError):
            logger.warning(
                "admin sign-in throttle unavailable (Redis); failure from %s not counted",
                address,
            )
            return None
        if int(failures) <= self._limit:
            return None
        return self._refused(address, where, int(left_ms))

    def _refused(self, address: str, where: str, left_ms: int) -> SigninRefusal:
        retry_after_s = max(1, math.ceil(max(left_ms, 0) / 1000))
        logger.warning(
            "admin sign-in refused on the %s from %s: too many failures, retry after %d s",
            where,
            address,
            retry_after_s,
        )
        return SigninRefusal(retry_after_s)
