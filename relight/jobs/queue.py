"""The contract between whoever enqueues a job and the worker that runs it.

Kept in the core so the api and the worker agree without importing each other: the task name,
the JSON (not pickle) serializer arq uses for job payloads, how jobs are put in arq's queue, and
the wake-up channel: whoever enqueues a job that is due now publishes on it, so idle workers
start the job at once instead of at their next poll (the poll stays as the fallback when a
message is lost).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

RUN_JOB_TASK = "run_job"
DELIVER_WEBHOOK_TASK = "deliver_webhook"
SWEEP_TASK = "sweep"


def wake_channel(queue_name: str) -> str:
    """The pub/sub channel on which workers of `queue_name` wait for new jobs."""
    return f"{queue_name}:wake"


def serialize_job(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data)


def deserialize_job(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(data)
    return result


# arq's storage layout (arq.constants; tests/worker/test_wakeup.py checks they still agree):
# a job is a key holding its serialized definition plus a member of the queue's sorted set,
# scored by the time it is due (ms).
ARQ_JOB_KEY_PREFIX = "arq:job:"
ARQ_RESULT_KEY_PREFIX = "arq:result:"
# How long a queued job's definition outlives its due time (arq's `expires_extra_ms`).
JOB_EXPIRES_EXTRA_MS = 86_400_000

# arq's `enqueue_job` in one round trip instead of four (WATCH, EXISTS, MULTI/EXEC and the
# wake-up PUBLISH), and atomic without WATCH. KEYS: job key, result key, queue, wake channel.
# ARGV: expiry ms, payload, score, job id, "1" to wake the workers. 0 when the job exists.
ENQUEUE_SCRIPT = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
if ARGV[5] == '1' then redis.call('PUBLISH', KEYS[4], '') end
return 1
"""

Enqueuer = Redis


async def enqueue(
    redis: Redis,
    queue_name: str,
    function: str,
    job_id: str,
    *args: Any,
    defer_s: float | None = None,
) -> bool:
    """Queue `function(*args)` for arq's workers as arq's own `enqueue_job` would (same keys,
    same payload, refused when `job_id` is queued, running or kept as a result), waking idle
    workers when it is due now. False when arq already holds the job."""
    now_ms = round(time.time() * 1000)
    score = now_ms + round((defer_s or 0) * 1000)
    payload = serialize_job({"t": None, "f": function, "a": args, "k": {}, "et": now_ms})
    keys = [
        ARQ_JOB_KEY_PREFIX + job_id,
        ARQ_RESULT_KEY_PREFIX + job_id,
        queue_name,
        wake_channel(queue_name),
    ]
    wake = "1" if score <= now_ms else "0"
    argv: list[bytes | str | int] = [
        score - now_ms + JOB_EXPIRES_EXTRA_MS,
        payload,
        score,
        job_id,
        wake,
    ]
    # A Script object is cheap (it hashes the source); it runs EVALSHA and loads the script
    # when Redis does not know it yet.
    return bool(await redis.register_script(ENQUEUE_SCRIPT)(keys=keys, args=argv))


async def enqueue_run(enqueuer: Enqueuer, queue_name: str, job_id: uuid.UUID) -> bool:
    """Queue a committed job; False when arq already holds it (it refuses a second copy)."""
    return await enqueue(enqueuer, queue_name, RUN_JOB_TASK, str(job_id), str(job_id))


async def enqueue_delivery(
    enqueuer: Enqueuer,
    queue_name: str,
    delivery_id: uuid.UUID,
    attempt: int,
    defer_s: float | None = None,
) -> bool:
    """Queue attempt number `attempt` of a webhook delivery (one queued copy per attempt);
    False when arq already holds it."""
    return await enqueue(
        enqueuer,
        queue_name,
        DELIVER_WEBHOOK_TASK,
        delivery_job_id(delivery_id, attempt),
        str(delivery_id),
        defer_s=defer_s,
    )


def delivery_job_id(delivery_id: uuid.UUID, attempt: int) -> str:
    return f"webhook:{delivery_id}:{attempt}"


def redis_retry_options() -> dict[str, Any]:
    """Connection options that make a Redis client ride out a restart: a dropped connection
    is reopened and the command retried, with backoff, for about half a minute."""
    return {
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=20),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "retry_on_timeout": True,
    }
