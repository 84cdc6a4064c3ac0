"""The contract between whoever enqueues a job and the worker that runs it.

Kept in the core so the api and the worker agree without importing each other: the task name,
and the JSON (not pickle) serializer arq uses for job payloads.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

import orjson
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

RUN_JOB_TASK = "run_job"
DELIVER_WEBHOOK_TASK = "deliver_webhook"
SWEEP_TASK = "sweep"


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


async def enqueue_run(enqueuer: Enqueuer, queue_name: str, job_id: uuid.UUID) -> bool:
    """Queue a committed job; False when arq already holds it (it refuses a second copy)."""
    queued = await enqueuer.enqueue_job(
        RUN_JOB_TASK, str(job_id), _job_id=str(job_id), _queue_name=queue_name
    )
    return queued is not None


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
    return queued is not None


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
