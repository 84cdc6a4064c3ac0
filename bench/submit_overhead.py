"""What the rate limiter and the credit reservation add to one submit, in microseconds.

Measured in-process against the real Postgres and Redis, one operation at a time:
- rate limiter: one `RateLimiter.check` (one EVALSHA of the GCRA script);
- reservation: the submit's own statement (`relight.credits.reservation.reserve_credits`: the
  conditional balance UPDATE, the ledger entry and the job row in one round trip), against a
  transaction that inserts the job row alone.

    .venv/bin/python bench/submit_overhead.py [--rounds 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli import parse_args  # noqa: E402
from bench.common import create_scratch_database, drop_scratch_database, percentile  # noqa: E402
from relight.core.config import Settings  # noqa: E402
from relight.core.db import create_engine, create_sessionmaker  # noqa: E402
from relight.core.ids import uuid7  # noqa: E402
from relight.core.models import Job, JobStatus  # noqa: E402
from relight.core.ratelimit import RateLimiter, RateLimitPolicy  # noqa: E402
from relight.credits.reservation import reserve_credits  # noqa: E402
from relight.tenants.schemas import LimitsUpdate  # noqa: E402
from relight.tenants.service import create_tenant  # noqa: E402


async def timed(rounds: int, operation: Callable[[], Awaitable[None]]) -> list[float]:
    for _ in range(min(50, rounds)):  # warm-up: connections, prepared statements, script cache
        await operation()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await operation()
        samples.append((time.perf_counter() - started) * 1_000_000)
    return samples


async def run(rounds: int) -> list[tuple[str, list[float]]]:
    url = await create_scratch_database()
    settings = Settings(database_url=url)
    engine = create_engine(settings, pool_size=2)
    sessionmaker = create_sessionmaker(engine)
    redis = Redis.from_url(settings.redis_url)
    try:
        async with sessionmaker() as session, session.begin():
            limits = LimitsUpdate(max_in_flight=100_000)
            tenant = await create_tenant(session, "bench", 10**12, limits)
        tenant_id = tenant.id
        limiter = RateLimiter(redis, "relight:bench:ratelimit")
        policy = RateLimitPolicy(requests_per_minute=10**9, burst=10**6)

        async def rate_limit() -> None:
            await limiter.check(str(tenant_id), policy)

        def new_job() -> Job:
            # As a submit makes it: the id encodes the instant of acceptance, `created_at`.
            created_at = datetime.now(UTC)
            return Job(
                id=uuid7(created_at),
                created_at=created_at,
                tenant_id=tenant_id,
                status=JobStatus.QUEUED.value,
                params={"prompt": "bench"},
                input_url="https://example.com/cat.png",
                input_storage_key=None,
                background_url=None,
                background_storage_key=None,
                seed=1,
                backend_requested="auto",
                credits_reserved=10,
                idempotency_key=None,
                request_hash=None,
                webhook_url=None,
                webhook_events=[],
                http_request_id=None,
            )

        async def insert_job() -> None:
            async with sessionmaker() as session, session.begin():
                session.add(new_job())
                await session.flush()

        async def insert_job_and_reserve() -> None:
            async with sessionmaker() as session, session.begin():
                # The submit's own path: reservation, ledger entry and job in one statement.
                await reserve_credits(session, new_job(), 10)

        return [
            ("rate limiter check", await timed(rounds, rate_limit)),
            ("submit transaction, job row only", await timed(rounds, insert_job)),
            ("submit transaction, + reservation", await timed(rounds, insert_job_and_reserve)),
        ]
    finally:
        await redis.aclose()
        await engine.dispose()
        await drop_scratch_database()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    args = parse_args(parser, rounds=50)
    rows = asyncio.run(run(args.rounds))
    print(f"per submit, {args.rounds} rounds each, sequential, real Postgres and Redis")
    print(f"{'operation':<40}{'p50 µs':>10}{'p99 µs':>10}")
    for name, samples in rows:
        print(f"{name:<40}{statistics.median(samples):>10.0f}{percentile(samples, 0.99):>10.0f}")
    base = statistics.median(rows[1][1])
    added = statistics.median(rows[2][1]) - base
    limiter = statistics.median(rows[0][1])
    print(f"{'added by the reservation (p50)':<40}{added:>10.0f}")
    print(f"{'added by rate limit + reservation (p50)':<40}{added + limiter:>10.0f}")


if __name__ == "__main__":
    main()
