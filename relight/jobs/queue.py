"""The contract between whoever enqueues a job and the worker that runs it.

Kept in the core so the api and the worker agree without importing each other: the task name,
the JSON (not pickle) serializer arq uses for job payloads, and the wake-up channel: whoever
enqueues a job that is due now publishes on it, so idle workers start the job at once instead of
at their next poll (the poll stays as the fallback when a message is lost).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Protocol

import orjson
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

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


class Enqueuer(Protocol):
    """What the api and the worker hand the core to enqueue with: arq's `ArqRedis`."""

    async def enqueue_job(
        self,
        function: str,
        *args: Any,
        _job_id: str | None = None,
        _queue_name: str | None = None,
        _defer_by: float | None = None,
    ) -> Any: ...

    # Redis' PUBLISH; returns an awaitable (redis-py types it loosely).
    def publish(self, channel: str, message: str) -> Any: ...


async def wake_workers(enqueuer: Enqueuer, queue_name: str) -> None:
    """Tell idle workers that a job is due now. The job is already queued, so a lost message
    only delays it to the next poll: failures are logged, not raised."""
    try:
        await enqueuer.publish(wake_channel(queue_name), "")
    except (RedisError, OSError):
        logger.warning("could not wake the workers of %s", queue_name, exc_info=True)


async def enqueue_run(enqueuer: Enqueuer, queue_name: str, job_id: uuid.UUID) -> bool:
    """Queue a committed job; False when arq already holds it (it refuses a second copy)."""
    queued = await enqueuer.enqueue_job(
        RUN_JOB_TASK, str(job_id), _job_id=str(job_id), _queue_name=queue_name
    )
    if queued is None:
        return False
    await wake_workers(enqueuer, queue_name)
    return True


async def enqueue_delivery(
    enqueuer: Enqueuer,
    queue_name: str,
    delivery_id: uuid.UUID,
    attempt: int,
    defer_s: float | None = None,
) -> bool:
    """Queue attempt number `attempt` of a webhook delivery (one queued copy per attempt);
    False when arq already holds it."""
    queued = await enqueuer.enqueue_job(
        DELIVER_WEBHOOK_TASK,
        str(delivery_id),
        _job_id=delivery_job_id(delivery_id, attempt),
        _queue_name=queue_name,
        _defer_by=defer_s,
    )
    if queued is None:
        return False
    if not defer_s:
        await wake_workers(enqueuer, queue_name)
    return True


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
