"""The contract between whoever enqueues a job and the worker that runs it.

Kept in the core so the api and the worker agree without importing each other: the task name,
the JSON (not pickle) serializer arq uses for job payloads, how jobs are put in arq's queue (in
tenants' fair turns; arq's own layout is written by `relight.jobs.arq_format`), and the wake-up
channel: whoever enqueues a job that is due now publishes on it, so idle workers start the job
at once instead of at their next poll (the poll stays as the fallback when a message is lost).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relight.core.params import Priority
from relight.jobs.arq_format import FairKeys, add_job
from relight.tenants.weight_mirror import tenant_weights_key

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


# Fair turns between tenants. arq's queue (one sorted set) stays the only truth
# of what is enqueued and when it is due: arq, the sweeper and the metrics read it unchanged. A
# job submitted for a tenant is also listed in that tenant's queue, the tenant in the ring of
# tenants with work (scored by the turn in which its last turn ended; 0 = never, first in line),
# and the job in a job → tenant hash. The worker's claim (`arq_format.FAIR_CLAIM_SCRIPT`) takes
# the next job from the tenant whose turn is oldest; a tenant starts as many jobs per turn as
# its weight (the weights hash, tenant id → weight, absent = 1; the served hash counts the jobs
# started in the current turn), then goes to the back of the ring. Entries of finished jobs are
# dropped lazily by that script, when it finds them gone from arq's queue.
#
# Priority lanes: a tenant's queue is ordered by lane (high, normal, low), then by due time
# (`arq_format.lane_score`), so the tenant's job that its turn starts is the oldest due job of
# its highest lane with one. Lanes order a tenant's own jobs only: which tenant's turn it is
# stays the ring's, so one tenant's high lane never starves another tenant. A retry keeps its
# entry (and lane); the sweeper's re-enqueue passes the lane read from the job row.
#
# A tenant's weight lives in Postgres (`tenant.weight`); Redis holds a mirror (its key and
# writer are `relight.tenants.weight_mirror`'s: tenants sit below jobs), written after
# the admin API or `relight-admin` commits a change, again by every submit of the tenant's
# jobs (the API knows the weight from the tenant it authenticated), and by the sweeper when it
# enqueues a lost job again (it reads the weight with the job). So a Redis that lost the hash (a
# flush, a restart without persistence) heals with the sweep that puts its jobs back, or the
# tenant's next submit; until then the tenant counts as weight 1.
def tenant_queue_prefix(queue_name: str) -> str:
    return f"{queue_name}:tenant:"


def tenant_queue_key(queue_name: str, tenant_id: str) -> str:
    """The sorted set of a tenant's jobs (job id scored like arq's queue)."""
    return tenant_queue_prefix(queue_name) + tenant_id


def tenant_ring_key(queue_name: str) -> str:
    """The sorted set of tenants with jobs listed, scored by the turn their last turn ended."""
    return f"{queue_name}:tenants"


def job_tenant_key(queue_name: str) -> str:
    """The hash job id → tenant id of the jobs listed in tenant queues."""
    return f"{queue_name}:job-tenant"


def turn_counter_key(queue_name: str) -> str:
    return f"{queue_name}:turn"


def served_in_turn_key(queue_name: str) -> str:
    """The hash tenant id → jobs started in its current turn (absent: none yet)."""
    return f"{queue_name}:tenant-served"


def fair_keys(queue_name: str) -> FairKeys:
    """The keys of fair turns for `queue_name`, as the scripts of `arq_format` take them."""
    return FairKeys(
        tenant_queue_prefix=tenant_queue_prefix(queue_name),
        ring=tenant_ring_key(queue_name),
        job_tenant=job_tenant_key(queue_name),
        turn_counter=turn_counter_key(queue_name),
        weights=tenant_weights_key(queue_name),
        served=served_in_turn_key(queue_name),
    )


Enqueuer = Redis


async def enqueue(
    redis: Redis,
    queue_name: str,
    function: str,
    job_id: str,
    *args: Any,
    defer_s: float | None = None,
    tenant_id: str | None = None,
    weight: int | None = None,
    priority: Priority = Priority.NORMAL,
) -> bool:
    """Enqueue `function(*args)` for arq's workers as arq's own `enqueue_job` would (same
    keys, same payload, refused when `job_id` is enqueued, running or kept as a result), waking idle
    workers when it is due now. With `tenant_id`, the job takes fair turns with other tenants'
    jobs, `weight` (when given) being the tenant's, in its `priority` lane of the tenant's
    queue. False when arq already holds the job."""
    return await add_job(
        redis,
        queue_name,
        function,
        job_id,
        args,
        serializer=serialize_job,
        wake_channel=wake_channel(queue_name),
        defer_s=defer_s,
        fair=fair_keys(queue_name),
        tenant_id=tenant_id,
        weight=weight,
        lane_rank=priority.rank,
    )


async def enqueue_run(
    enqueuer: Enqueuer,
    queue_name: str,
    job_id: uuid.UUID,
    tenant_id: uuid.UUID | None = None,
    weight: int | None = None,
    priority: Priority | str = Priority.NORMAL,
) -> bool:
    """Queue a committed job, in its tenant's turns when `tenant_id` is given (with the
    tenant's `weight` when the caller knows it, which refreshes the mirror in Redis) and in its
    `priority` lane there; False when arq already holds it (it refuses a second copy)."""
    return await enqueue(
        enqueuer,
        queue_name,
        RUN_JOB_TASK,
        str(job_id),
        str(job_id),
        tenant_id=None if tenant_id is None else str(tenant_id),
        weight=weight,
        priority=Priority(priority),
    )


async def enqueue_delivery(
    enqueuer: Enqueuer,
    queue_name: str,
    delivery_id: uuid.UUID,
    attempt: int,
    defer_s: float | None = None,
) -> bool:
    """Enqueue attempt number `attempt` of a webhook delivery (one arq entry per attempt);
    False when arq already holds it."""
    return await enqueue(
        enqueuer,
        queue_name,
        DELIVER_WEBHOOK_TASK,
        delivery_job_id(delivery_id, attempt),
        str(delivery_id),
        defer_s=defer_s,
    )


DELIVERY_JOB_PREFIX = "webhook:"


def delivery_job_id(delivery_id: uuid.UUID, attempt: int) -> str:
    return f"{DELIVERY_JOB_PREFIX}{delivery_id}:{attempt}"


def redis_retry_options() -> dict[str, Any]:
    """Connection options that make a Redis client ride out a restart: a dropped connection
    is reopened and the command retried, with backoff, for about half a minute."""
    return {
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=20),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "retry_on_timeout": True,
    }
