"""relight/jobs/arq_format.py writes and claims arq's private storage format without arq;
worker/wakeup.py overrides private arq Worker methods. These tests hold both to the installed
arq: the same job queued by arq's own `enqueue_job` and by ours looks the same in Redis, arq's
own Worker runs a job queued by us, arq's own Job API sees our claim, and the arq source that
the two modules imitate or override is pinned, so an arq upgrade that changes it fails here
with the name of what to re-check. Real Redis, real arq."""

from __future__ import annotations

import hashlib
import inspect
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import arq
import pytest
from arq import constants as arq_constants
from arq import jobs as arq_jobs
from arq import utils as arq_utils
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job, JobStatus
from arq.jobs import deserialize_job as arq_deserialize_job
from arq.worker import Worker, func

from relight.core.config import Settings
from relight.jobs import arq_format, queue

DEFER_S = 30.0
# Two round trips apart on loopback, at most.
TTL_TOLERANCE_MS = 2_000


@pytest.fixture
async def queue_names(settings: Settings, redis: ArqRedis) -> AsyncIterator[tuple[str, str]]:
    """Two queues of the test's own: one filled by arq, one by us; dropped afterwards."""
    prefix = f"{settings.queue_name}:contract-{uuid.uuid4().hex[:8]}"
    yield f"{prefix}:by-arq", f"{prefix}:by-relight"
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis.delete(*keys)


@pytest.fixture
async def job_ids(redis: ArqRedis) -> AsyncIterator[Callable[[], str]]:
    """Makes job ids; drops their arq keys afterwards (those are not under the run's prefix)."""
    made: list[str] = []

    def make() -> str:
        made.append(f"contract-{uuid.uuid4().hex}")
        return made[-1]

    yield make
    prefixes = (arq_format.JOB_KEY_PREFIX, arq_format.RESULT_KEY_PREFIX)
    keys = [
        prefix + job_id
        for job_id in made
        for prefix in (*prefixes, arq_format.IN_PROGRESS_KEY_PREFIX)
    ]
    if keys:
        await redis.delete(*keys)


def test_the_copied_constants_are_arqs() -> None:
    # relight/ never imports arq, so arq_format keeps copies; they must match arq's.
    assert arq_format.JOB_KEY_PREFIX == arq_constants.job_key_prefix
    assert arq_format.RESULT_KEY_PREFIX == arq_constants.result_key_prefix
    assert arq_format.IN_PROGRESS_KEY_PREFIX == arq_constants.in_progress_key_prefix
    assert arq_format.EXPIRES_EXTRA_MS == arq_constants.expires_extra_ms


async def stored(redis: ArqRedis, queue_name: str, job_id: str) -> dict[str, Any]:
    """What Redis holds for a queued job, read as arq reads it."""
    payload = await redis.get(arq_constants.job_key_prefix + job_id)
    assert payload is not None, f"no job key for {job_id} ({queue_name})"
    definition = arq_deserialize_job(payload, deserializer=queue.deserialize_job)
    score = await redis.zscore(queue_name, job_id)
    assert score is not None, f"{job_id} is not in {queue_name}"
    enqueued_ms = round(definition.enqueue_time.timestamp() * 1000)
    return {
        "function": definition.function,
        "args": tuple(definition.args),
        "kwargs": definition.kwargs,
        "job_try": definition.job_try,
        "defer_ms": int(score) - enqueued_ms,
        "enqueued_ms": enqueued_ms,
        "ttl_ms": await redis.pttl(arq_constants.job_key_prefix + job_id),
        "queued": await redis.zcard(queue_name),
    }


async def test_a_job_queued_here_is_stored_as_arqs_enqueue_job_stores_it(
    redis: ArqRedis, queue_names: tuple[str, str], job_ids: Callable[[], str]
) -> None:
    by_arq, by_us = queue_names
    job_id = job_ids()
    args = (job_id, 7, "x")
    # arq's job key is global (not per queue): one copy at a time, the same id both times.
    assert await redis.enqueue_job(
        "run_job", *args, _job_id=job_id, _queue_name=by_arq, _defer_by=DEFER_S
    )
    theirs = await stored(redis, by_arq, job_id)
    await redis.delete(arq_constants.job_key_prefix + job_id)
    tenant = str(uuid.uuid4())
    assert await queue.enqueue(
        redis, by_us, "run_job", job_id, *args, defer_s=DEFER_S, tenant_id=tenant, weight=2
    )
    ours = await stored(redis, by_us, job_id)

    assert abs(ours.pop("ttl_ms") - theirs.pop("ttl_ms")) < TTL_TOLERANCE_MS
    assert abs(ours.pop("enqueued_ms") - theirs.pop("enqueued_ms")) < TTL_TOLERANCE_MS
    assert ours == theirs
    assert theirs["defer_ms"] == DEFER_S * 1000
    assert (await Job(job_id, redis, _queue_name=by_us).status()) is JobStatus.deferred


async def test_both_refuse_a_job_id_the_other_holds(
    redis: ArqRedis, queue_names: tuple[str, str], job_ids: Callable[[], str]
) -> None:
    by_arq, by_us = queue_names
    held_by_arq, held_by_us, finished = job_ids(), job_ids(), job_ids()
    assert await redis.enqueue_job("run_job", held_by_arq, _job_id=held_by_arq, _queue_name=by_arq)
    assert await queue.enqueue(redis, by_us, "run_job", held_by_us, held_by_us)
    await redis.set(arq_constants.result_key_prefix + finished, b"kept result")

    assert not await queue.enqueue(redis, by_us, "run_job", held_by_arq, held_by_arq)
    assert await redis.enqueue_job("run_job", _job_id=held_by_us, _queue_name=by_arq) is None
    assert not await queue.enqueue(redis, by_us, "run_job", finished, finished)
    assert await redis.enqueue_job("run_job", _job_id=finished, _queue_name=by_arq) is None
    assert await redis.zrange(by_us, 0, -1) == [held_by_us.encode()]


async def test_arqs_own_worker_runs_a_job_queued_here(
    settings: Settings, redis: ArqRedis, queue_names: tuple[str, str], job_ids: Callable[[], str]
) -> None:
    _, by_us = queue_names
    calls: list[tuple[str, int]] = []

    async def echo(ctx: dict[str, Any], text: str, number: int) -> str:
        calls.append((text, number))
        return f"{text}:{number}"

    job_id = job_ids()
    assert await queue.enqueue(
        redis, by_us, "echo", job_id, "hello", 3, tenant_id=str(uuid.uuid4())
    )
    worker = Worker(
        functions=[func(echo, name="echo")],
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        queue_name=by_us,
        burst=True,
        poll_delay=0,
        handle_signals=False,
        job_serializer=queue.serialize_job,
        job_deserializer=queue.deserialize_job,
    )
    try:
        await worker.async_run()
    finally:
        await worker.close()

    assert calls == [("hello", 3)]
    job = Job(job_id, redis, _queue_name=by_us, _deserializer=queue.deserialize_job)
    assert await job.result(timeout=1) == "hello:3"
    assert await redis.zcard(by_us) == 0


async def test_arqs_job_api_sees_our_claim_of_a_job_it_queued(
    redis: ArqRedis, queue_names: tuple[str, str], job_ids: Callable[[], str]
) -> None:
    by_arq, _ = queue_names
    job_id = job_ids()
    assert await redis.enqueue_job("run_job", job_id, _job_id=job_id, _queue_name=by_arq)
    score = await redis.zscore(by_arq, job_id)
    timeout_s = 45.0

    assert await arq_format.claim_job(redis, by_arq, job_id, timeout_s) == (job_id, score)

    assert (await Job(job_id, redis, _queue_name=by_arq).status()) is JobStatus.in_progress
    ttl_ms = await redis.pttl(arq_constants.in_progress_key_prefix + job_id)
    assert timeout_s * 1000 - TTL_TOLERANCE_MS < ttl_ms <= timeout_s * 1000
    # A second claim (another worker's) is refused, as arq's own would be.
    assert await arq_format.claim_job(redis, by_arq, job_id, timeout_s) is None


# --- the arq source this project imitates or overrides ----------------------------------------

# Recorded on arq 0.28.0: sha256 (first 16 hex digits) of `inspect.getsource(...)`.
RECORDED_ON_ARQ = "0.28.0"
WAKEUP = "worker/wakeup.py (WakeableWorker)"
ARQ_FORMAT = "relight/jobs/arq_format.py"
PINNED: dict[str, tuple[Callable[..., Any], str, str]] = {
    # name: (the arq object, its recorded hash, what to re-check when it changes)
    "Worker.__init__": (
        Worker.__init__,
        "edfb0cd7e05e77cf",
        f"{WAKEUP}: poll_delay and the attributes it uses",
    ),
    "Worker.main": (Worker.main, "45ca1591c9717466", f"{WAKEUP}: its poll loop, with poll_delay=0"),
    "Worker._poll_iteration": (
        Worker._poll_iteration,
        "f8d39d823a0a59f2",
        f"{WAKEUP}._poll_iteration",
    ),
    "Worker.start_jobs": (
        Worker.start_jobs,
        "b45797cfa40bed7f",
        f"{WAKEUP}.start_jobs and the claims in {ARQ_FORMAT}",
    ),
    "Worker._release_sem_dec_counter_on_complete": (
        Worker._release_sem_dec_counter_on_complete,
        "0ed101482e942c33",
        f"{WAKEUP}._release_sem_dec_counter_on_complete",
    ),
    "Worker.run_job": (
        Worker.run_job,
        "589a19059ff84ee7",
        f"{WAKEUP}.start_jobs and the claims in {ARQ_FORMAT}",
    ),
    "Worker.close": (Worker.close, "5bcc9cb356680829", f"{WAKEUP}.close"),
    "arq.utils.poll": (
        arq_utils.poll,
        "d8cc8542a1ab2bc3",
        f"{WAKEUP}: poll_delay=0 must not sleep",
    ),
    "ArqRedis.enqueue_job": (
        ArqRedis.enqueue_job,
        "7da8706a747c1171",
        f"{ARQ_FORMAT}: add_job and ENQUEUE_SCRIPT",
    ),
    "arq.jobs.serialize_job": (
        arq_jobs.serialize_job,
        "1fc854cc50e16e5c",
        f"{ARQ_FORMAT}: job_definition",
    ),
}


def source_hash(target: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(target).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_the_arq_source_we_depend_on_is_unchanged(name: str) -> None:
    target, recorded, recheck = PINNED[name]
    actual = source_hash(target)
    assert actual == recorded, (
        f"arq {arq.VERSION} changed {name} (recorded on arq {RECORDED_ON_ARQ}). Re-check "
        f"{recheck} against the new source, then record its hash here: {actual!r}."
    )
