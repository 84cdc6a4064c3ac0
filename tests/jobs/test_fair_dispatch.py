"""Fair turns between tenants: a tenant's single job starts before another
tenant's backlog drains, and a tenant of weight w starts w jobs per turn. Real API, a real
worker (one slot, jobs of a fixed length), real Redis and Postgres; the same backlog in arq's
old global order shows what the turns change."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import httpx
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bench.noop_worker import NoopBackend
from relight.core.config import Settings
from relight.core.models import Job
from relight.core.params import Backend
from relight.core.storage.filesystem import FileSystemStorage
from relight.jobs import queue
from relight.tenants.service import find_tenant, set_weight
from tests.conftest import MakeTenant, delete_run_keys
from tests.helpers import fast_body, submit
from tests.weights import mirrored_weight
from worker.settings import build_worker
from worker.tasks import sweep

BACKLOG = 12
JOB_S = 0.05


@dataclass(frozen=True)
class JobRun:
    id: str
    started_at: datetime
    attempts: int


async def run_one_slot(
    ids: list[str],
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    *,
    fair: bool,
) -> list[JobRun]:
    """Run the queued jobs `ids` on one worker with one slot (jobs of JOB_S each) until they
    all succeeded and left arq's queue; how each ran."""
    one_slot = settings.model_copy(
        update={"worker_concurrency": 1, "webhook_sweep_interval_s": 60, "fair_dispatch": fair}
    )
    worker = build_worker(
        one_slot, backends={Backend.LOCAL: NoopBackend(JOB_S)}, handle_signals=False
    )
    task = asyncio.create_task(worker.async_run())
    job_ids = [uuid.UUID(request_id) for request_id in ids]
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            async with sessionmaker() as session:
                statuses = (
                    await session.scalars(select(Job.status).where(Job.id.in_(job_ids)))
                ).all()
            # arq takes a job out of its queue just after the job's last commit.
            in_queue = await redis.zmscore(settings.queue_name, ids)
            done = len(statuses) == len(ids) and all(s == "succeeded" for s in statuses)
            if done and all(score is None for score in in_queue):
                break
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
    async with sessionmaker() as session:
        query = select(Job.id, Job.status, Job.started_at, Job.attempts)
        rows = (await session.execute(query.where(Job.id.in_(job_ids)))).all()
    assert {row.status for row in rows} == {"succeeded"}
    assert len(rows) == len(ids)
    assert all(row.started_at is not None for row in rows)
    return [JobRun(str(row.id), row.started_at, row.attempts) for row in rows]


async def run_backlog_then_single(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    *,
    fair: bool,
) -> tuple[list[datetime], datetime]:
    """Tenant A queues BACKLOG jobs, then tenant B one; one worker with one slot runs them all.
    The start times of A's jobs and of B's."""
    tenant_a = await make_tenant("tenant-a")
    tenant_b = await make_tenant("tenant-b")
    backlog = [await submit(client, tenant_a, fast_body()) for _ in range(BACKLOG)]
    single = await submit(client, tenant_b, fast_body())
    rows = await run_one_slot([*backlog, single], settings, sessionmaker, redis, fair=fair)
    started = {run.id: run.started_at for run in rows}
    return [started[request_id] for request_id in backlog], started[single]


async def test_another_tenants_job_starts_before_a_backlog_drains(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    engine: AsyncEngine,
) -> None:
    backlog, single = await run_backlog_then_single(
        client, make_tenant, settings, sessionmaker, redis, fair=True
    )
    # B waits for at most the job that was starting when its turn came, not for the backlog.
    assert sum(1 for started in backlog if started < single) <= 1


async def test_in_arq_order_the_same_job_waits_for_the_whole_backlog(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    engine: AsyncEngine,
) -> None:
    backlog, single = await run_backlog_then_single(
        client, make_tenant, settings, sessionmaker, redis, fair=False
    )
    assert all(started < single for started in backlog)


async def test_finished_jobs_leave_no_tenant_entries_behind(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    engine: AsyncEngine,
) -> None:
    await run_backlog_then_single(client, make_tenant, settings, sessionmaker, redis, fair=True)
    name = settings.queue_name
    # Only sweeps (cron runs, no tenant's) are left in arq's queue.
    members = await redis.zrange(name, 0, -1)
    assert all(member.startswith(f"{queue.SWEEP_TASK}:".encode()) for member in members)
    # The last claims drop what they find finished; at most the last job per tenant remains.
    tenants = await redis.zrange(queue.tenant_ring_key(name), 0, -1)
    listed = [await redis.zcard(queue.tenant_queue_key(name, t.decode())) for t in tenants]
    assert sum(listed) <= 2


async def test_a_tenant_of_weight_3_starts_3_jobs_for_each_job_of_a_tenant_of_weight_1(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    engine: AsyncEngine,
) -> None:
    heavy = await make_tenant("heavy")
    light = await make_tenant("light")
    async with sessionmaker() as session, session.begin():
        await set_weight(session, await find_tenant(session, "heavy"), 3)
    # Light's jobs are queued first: in arq's order they would all run before heavy's.
    light_jobs = [await submit(client, light, fast_body()) for _ in range(BACKLOG)]
    heavy_jobs = [await submit(client, heavy, fast_body()) for _ in range(BACKLOG)]
    # Each submit told the workers its tenant's weight (no admin call reached Redis here).
    assert await mirrored_weight(redis, settings.queue_name, str(heavy.tenant_id)) == b"3"
    assert await mirrored_weight(redis, settings.queue_name, str(light.tenant_id)) == b"1"

    rows = await run_one_slot([*light_jobs, *heavy_jobs], settings, sessionmaker, redis, fair=True)

    # Nothing lost, nothing run twice.
    assert sorted(run.id for run in rows) == sorted([*light_jobs, *heavy_jobs])
    assert {run.attempts for run in rows} == {1}
    heavy_ids = set(heavy_jobs)
    # The start order, H for heavy's jobs and L for light's.
    order = "".join(
        "H" if run.id in heavy_ids else "L" for run in sorted(rows, key=lambda run: run.started_at)
    )
    # While both have a backlog (heavy's lasts BACKLOG / 3 turns of 3 + 1), heavy starts 3
    # jobs for each of light's: HHHL or LHHH repeated, never two L nor four H in a row.
    both_waiting = order[: BACKLOG + BACKLOG // 3]
    assert both_waiting.count("H") == BACKLOG, order
    assert "LL" not in both_waiting, order
    assert "HHHH" not in both_waiting, order


async def test_a_sweep_that_queues_lost_jobs_again_writes_their_tenants_weight_again(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
) -> None:
    """A Redis that lost everything (a restart without persistence, a FLUSHALL) also lost the
    weights: the sweep that puts the jobs back writes them again, before any new submit.
    (Failed before the change: the jobs came back at weight 1, the mirror stayed empty.)"""
    heavy = await make_tenant("heavy")
    async with sessionmaker() as session, session.begin():
        await set_weight(session, await find_tenant(session, "heavy"), 3)
    jobs = [await submit(client, heavy, fast_body()) for _ in range(2)]
    # What a FLUSHALL does to this run (other runs share the database): its queue, tenant
    # turns and weights, and the jobs' arq keys.
    await delete_run_keys(redis, settings)
    await redis.delete(*(job_key_prefix + job for job in jobs))
    assert await mirrored_weight(redis, settings.queue_name, str(heavy.tenant_id)) is None

    no_grace = settings.model_copy(update={"requeue_grace_s": 0.001})
    await asyncio.sleep(0.01)
    storage = FileSystemStorage(settings.storage_dir)
    ctx = {"sessionmaker": sessionmaker, "settings": no_grace, "redis": redis, "storage": storage}
    counts = await sweep(ctx)

    assert counts["requeued"] == 2
    assert await mirrored_weight(redis, settings.queue_name, str(heavy.tenant_id)) == b"3"
    tenant_queue = queue.tenant_queue_key(settings.queue_name, str(heavy.tenant_id))
    assert sorted(await redis.zrange(tenant_queue, 0, -1)) == sorted(j.encode() for j in jobs)
