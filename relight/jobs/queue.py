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
# wake-up PUBLISH), and atomic without WATCH. KEYS: job key, result key, queue, wake channel,
# the tenant's queue, the tenant ring, the job → tenant hash (see `tenant_queue_key`).
# ARGV: expiry ms, payload, score, job id, "1" to wake the workers, tenant id ("" for a job
# that belongs to no tenant). 0 when the job exists.
ENQUEUE_SCRIPT = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[3], ARGV[4])
  redis.call('ZADD', KEYS[6], 'NX', 0, ARGV[6])
  redis.call('HSET', KEYS[7], ARGV[4], ARGV[6])
end
if ARGV[5] == '1' then redis.call('PUBLISH', KEYS[4], '') end
return 1
"""


# Fair turns between tenants (DESIGN.md §5). arq's queue (one sorted set) stays the only truth
# of what is queued and when it is due: arq, the sweeper and the metrics read it unchanged. A
# job submitted for a tenant is also listed in that tenant's queue, the tenant in the ring of
# tenants with work (scored by the turn in which it was last served; 0 = never, first in line),
# and the job in a job → tenant hash; the worker's claim script (worker/wakeup.py) takes the
# next job from the tenant whose turn is oldest. Entries of finished jobs are dropped lazily
# by that script, when it finds them gone from arq's queue.
def tenant_queue_prefix(queue_name: str) -> str:
    return f"{queue_name}:tenant:"


def tenant_queue_key(queue_name: str, tenant_id: str) -> str:
    """The sorted set of a tenant's jobs (job id scored like arq's queue)."""
    return tenant_queue_prefix(queue_name) + tenant_id


def tenant_ring_key(queue_name: str) -> str:
    """The sorted set of tenants with jobs listed, scored by the turn they were last served."""
    return f"{queue_name}:tenants"


def job_tenant_key(queue_name: str) -> str:
    """The hash job id → tenant id of the jobs listed in tenant queues."""
    return f"{queue_name}:job-tenant"


def turn_counter_key(queue_name: str) -> str:
    return f"{queue_name}:turn"


Enqueuer = Redis


async def enqueue(
    redis: Redis,
    queue_name: str,
    function: str,
    job_id: str,
    *args: Any,
    defer_s: float | None = None,
    tenant_id: str | None = None,
) -> bool:
    """Queue `function(*args)` for arq's workers as arq's own `enqueue_job` would (same keys,
    same payload, refused when `job_id` is queued, running or kept as a result), waking idle
    workers when it is due now. With `tenant_id`, the job takes fair turns with other tenants'
    jobs (see `tenant_queue_key`). False when arq already holds the job."""
    now_ms = round(time.time() * 1000)
    score = now_ms + round((defer_s or 0) * 1000)
    payload = serialize_job({"t": None, "f": function, "a": args, "k": {}, "et": now_ms})
    keys = [
        ARQ_JOB_KEY_PREFIX + job_id,
        ARQ_RESULT_KEY_PREFIX + job_id,
        queue_name,
        wake_channel(queue_name),
        tenant_queue_key(queue_name, tenant_id or ""),
        tenant_ring_key(queue_name),
        job_tenant_key(queue_name),
    ]
    wake = "1" if score <= now_ms else "0"
    argv: list[bytes | str | int] = [
        score - now_ms + JOB_EXPIRES_EXTRA_MS,
        payload,
        score,
        job_id,
        wake,
        tenant_id or "",
    ]
    # A Script object is cheap (it hashes the source); it runs EVALSHA and loads the script
    # when Redis does not know it yet.
    return bool(await redis.register_script(ENQUEUE_SCRIPT)(keys=keys, args=argv))


async def enqueue_run(
    enqueuer: Enqueuer, queue_name: str, job_id: uuid.UUID, tenant_id: uuid.UUID | None = None
) -> bool:
    """Queue a committed job, in its tenant's turns when `tenant_id` is given; False when arq
    already holds it (it refuses a second copy)."""
    return await enqueue(
        enqueuer,
        queue_name,
        RUN_JOB_TASK,
        str(job_id),
        str(job_id),
        tenant_id=None if tenant_id is None else str(tenant_id),
    )


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
