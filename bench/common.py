"""Shared by the benchmarks: a freshly migrated scratch database, a bench tenant, a queue of its
own, seeded history, percentiles and markdown tables."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from arq.constants import job_key_prefix
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
PG_SERVER = os.environ.get("RELIGHT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("RELIGHT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# One database and one queue per run, so a benchmark never meets another run (or a test).
RUN = uuid.uuid4().hex[:8]
DATABASE = f"relight_bench_{RUN}"
DATABASE_URL = PG_SERVER.replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{DATABASE}"
QUEUE_NAME = f"relight:bench:{RUN}"


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def create_scratch_database() -> str:
    """Create (anew) and migrate the benchmark database; its SQLAlchemy URL."""
    await _admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    await _admin(f'CREATE DATABASE "{DATABASE}"')
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", DATABASE_URL)
    config.attributes["configure_logger"] = False
    await asyncio.to_thread(command.upgrade, config, "head")
    return DATABASE_URL


async def drop_scratch_database() -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


async def create_bench_tenant(name: str = "bench") -> tuple[uuid.UUID, str]:
    """A tenant whose limits never get in the way (rate, credits, jobs in flight); its id and
    an API key."""
    from relight.core.config import Settings
    from relight.core.db import create_engine, create_sessionmaker
    from relight.tenants.schemas import LimitsUpdate
    from relight.tenants.service import create_api_key, create_tenant

    engine = create_engine(Settings(database_url=DATABASE_URL), pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            limits = LimitsUpdate(requests_per_minute=1_000_000, burst=100_000)
            tenant = await create_tenant(session, name, 10**12, limits)
            key = (await create_api_key(session, tenant, "bench")).key
            tenant_id = tenant.id
    finally:
        await engine.dispose()
    # Above what the admin API allows: a benchmark queues far more jobs than any tenant would.
    await sql(f"UPDATE tenant SET max_in_flight = 1000000000 WHERE id = '{tenant_id}'")
    return tenant_id, key


async def sql(statement: str) -> None:
    """Run one statement in the benchmark database."""
    connection = await asyncpg.connect(f"{PG_SERVER}/{DATABASE}")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def seed_history(tenant_id: uuid.UUID, rows: int) -> None:
    """`rows` finished jobs of `tenant_id` already in the table, written in one statement."""
    await sql(
        f"""
        INSERT INTO job (id, tenant_id, status, params, seed, backend_requested,
                         backend_used, attempts, credits_reserved, credits_charged,
                         webhook_events, timings, backend_calls, progress,
                         created_at, started_at, finished_at)
        SELECT gen_random_uuid(), '{tenant_id}', 'succeeded', '{{"prompt": "history"}}', n,
               'auto', 'local', 1, 10, 10, '["completed"]', '{{}}', '[]', 1,
               now() - n * interval '1 second', now() - n * interval '1 second',
               now() - n * interval '1 second'
        FROM generate_series(1, {rows}) AS n
        """
    )
    await sql("VACUUM ANALYZE job")


async def drop_queue(queue_name: str = QUEUE_NAME) -> None:
    """Remove the run's queue and the arq job keys of whatever is still in it."""
    redis = Redis.from_url(REDIS_URL)
    try:
        while members := await redis.zrange(queue_name, 0, 999):
            await redis.delete(*[job_key_prefix + member.decode() for member in members])
            await redis.zrem(queue_name, *members)
        keys = [key async for key in redis.scan_iter(match=f"{queue_name}*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


def bench_env(database_url: str, storage: Path, **extra: str) -> dict[str, str]:
    """The environment of the api/worker processes of a benchmark run."""
    return {
        **os.environ,
        "RELIGHT_DATABASE_URL": database_url,
        "RELIGHT_REDIS_URL": REDIS_URL,
        "RELIGHT_STORAGE_DIR": str(storage),
        "RELIGHT_QUEUE_NAME": QUEUE_NAME,
        "RELIGHT_LOG_LEVEL": "WARNING",
        **extra,
    }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table (README-ready), first column left-aligned, the others right."""
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
