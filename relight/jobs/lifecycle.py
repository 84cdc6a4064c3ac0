"""A job's life, in one place: every change of its status is one function here.

    queued ──claim──▶ running ──succeed──▶ succeeded   (charged)
      ▲                 │  └─────fail────▶ failed      (refunded)
      └─────────────────┘  retry, hand_back, expire_lease
    queued or running ──cancel──▶ canceled             (refunded)
    queued or running ──expire_deadline──▶ canceled    (refunded; `deadline_exceeded`)

(`expire_lease` fails the job once its attempts ran out; `record_progress` writes a running
attempt's progress under the same guard.)

The invariant: a job's `status` is written only here, through the guarded UPDATEs of
`repository` (`claim`, `transition`). Each step names the status, and for a running job the
attempt, that it expects, and changes nothing when the job moved on since; so of two racers (two
workers, a worker and a cancel, a worker and the sweeper) exactly one moves the job, and a job
is charged, refunded and announced exactly once. Each step runs in the caller's transaction and
answers `Moved` (the job as it now stands and the webhook deliveries the step scheduled), or
None when the guard found the job gone. A step that starts or ends a job announces `start` or
`completed` to the job's subscribers (`relight.jobs.subscribers`) in the same transaction: the
webhooks subscribe, and write their delivery rows there. Once the caller committed,
`announce` wakes whoever waits on or follows the job and enqueues those deliveries.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from relight.core.models import Job, JobOutput, JobStatus
from relight.core.storage.urls import UrlBuilder
from relight.credits.service import charge_credits, refund_credits
from relight.jobs import repository
from relight.jobs.deadlines import DEADLINE_EXCEEDED, deadline_message
from relight.jobs.events import Change, publish_changed, publish_finished
from relight.jobs.queue import Enqueuer, enqueue_delivery
from relight.jobs.subscribers import COMPLETED, START, notify_subscribers

logger = logging.getLogger(__name__)

WORKER_LOST = "worker_lost"


@dataclass(frozen=True)
class Moved:
    """What a step did: the job as it left it, which change that was for the job's followers,
    and the webhook deliveries it scheduled (to enqueue once the caller committed)."""

    job: Job
    change: Change = "status"
    deliveries: tuple[uuid.UUID, ...] = ()

    @property
    def finished(self) -> bool:
        return self.job.job_status.is_terminal


def _moved(job: Job | None, deliveries: tuple[uuid.UUID, ...] = ()) -> Moved | None:
    if job is None:
        return None
    return Moved(job, deliveries=deliveries)


async def claim(
    session: AsyncSession, job_id: uuid.UUID, lease_s: float, urls: UrlBuilder
) -> Moved | None:
    """`queued → running` for one more attempt, leased for `lease_s`; the first attempt also
    schedules the `start` webhook. None when the job is not queued (done, taken, canceled).

    A job whose deadline passed while it waited never starts: it is canceled here instead
    (`expire_deadline`), and answered as such (a `Moved` whose job is `canceled`)."""
    job = await repository.claim(session, job_id, lease_s)
    if job is None:
        # Rare: not queued, or queued past its deadline (the claim's guard leaves those).
        return await _expire_queued(session, job_id, urls)
    if job.attempts != 1:
        return _moved(job)
    return _moved(job, await notify_subscribers(session, job, START, urls))


async def succeed(
    session: AsyncSession,
    job: Job,
    *,
    backend_name: str,
    node: str | None,
    outputs: Sequence[JobOutput],
    model_digest: str | None = None,
    timings: dict[str, float],
    backend_calls: list[dict[str, Any]],
    urls: UrlBuilder,
) -> Moved | None:
    """`running → succeeded` for the attempt that holds `job`: its outputs recorded (with the
    GPU node's `model_digest`, when a node rendered them), the reservation charged, the
    `completed` webhook scheduled."""
    done = await _end_attempt(
        session,
        job,
        {
            "status": JobStatus.SUCCEEDED.value,
            "finished_at": datetime.now(UTC),
            "credits_charged": job.credits_reserved,
            "backend_used": backend_name,
            "node": node,
            "model_digest": model_digest,
            "progress": 1.0,
            "timings": timings,
            "backend_calls": backend_calls,
            "error_code": None,
            "error_message": None,
        },
    )
    if done is None:
        return None
    repository.add_outputs(session, outputs)
    await charge_credits(
        session, job.tenant_id, job.id, reserved=job.credits_reserved, cost=job.credits_reserved
    )
    return _moved(done, await notify_subscribers(session, done, COMPLETED, urls))


async def retry(
    session: AsyncSession,
    job: Job,
    *,
    code: str,
    message: str,
    timings: dict[str, float],
    backend_calls: list[dict[str, Any]],
) -> Moved | None:
    """`running → queued` after a failed attempt that may be tried again: the error and the
    attempt log are kept, the attempt counts."""
    return _moved(
        await _back_to_queue(
            session,
            job,
            error_code=code,
            error_message=message,
            timings=timings,
            backend_calls=backend_calls,
        )
    )


async def hand_back(session: AsyncSession, job: Job) -> Moved | None:
    """`running → queued` from a worker that is stopping: the interrupted attempt does not
    count."""
    return _moved(await _back_to_queue(session, job, attempts=job.attempts - 1))


async def fail(
    session: AsyncSession,
    job: Job,
    code: str,
    message: str,
    urls: UrlBuilder,
    *,
    timings: dict[str, float] | None = None,
    backend_calls: list[dict[str, Any]] | None = None,
) -> Moved | None:
    """`running → failed` for the attempt that holds `job`: refunded once, the `completed`
    webhook scheduled. `timings` and `backend_calls`, when given, replace the job's."""
    kept: dict[str, Any] = {}
    if timings is not None:
        kept["timings"] = timings
    if backend_calls is not None:
        kept["backend_calls"] = backend_calls
    moved = await _end_attempt(
        session,
        job,
        {
            **kept,
            "status": JobStatus.FAILED.value,
            "finished_at": datetime.now(UTC),
            "credits_charged": 0,
            "error_code": code,
            "error_message": message,
        },
    )
    if moved is None:
        return None
    await refund_credits(session, job.tenant_id, job.id, job.credits_reserved, reason=code)
    return _moved(moved, await notify_subscribers(session, moved, COMPLETED, urls))


async def cancel(session: AsyncSession, job_id: uuid.UUID, urls: UrlBuilder) -> Moved | None:
    """`queued → canceled` or `running → canceled` (whichever attempt runs it): refunded once,
    the `completed` webhook scheduled. The worker running it sees the job leave `running` and
    stops at its next safe point. None when the job is neither queued nor running."""
    values = {
        "status": JobStatus.CANCELED.value,
        "finished_at": datetime.now(UTC),
        "credits_charged": 0,
        "lease_expires_at": None,
    }
    canceled = await repository.transition(
        session, job_id, from_status=JobStatus.QUEUED, values=values
    )
    if canceled is None:
        canceled = await repository.transition(
            session, job_id, from_status=JobStatus.RUNNING, values=values
        )
    if canceled is None:
        return None
    await refund_credits(
        session, canceled.tenant_id, canceled.id, canceled.credits_reserved, reason="canceled"
    )
    return _moved(canceled, await notify_subscribers(session, canceled, COMPLETED, urls))


def _deadline_values() -> dict[str, Any]:
    """What a job canceled at its deadline is left with (as a cancel's, plus the reason)."""
    return {
        "status": JobStatus.CANCELED.value,
        "finished_at": datetime.now(UTC),
        "credits_charged": 0,
        "lease_expires_at": None,
        "error_code": DEADLINE_EXCEEDED,
        "error_message": deadline_message(),
    }


async def _expired(session: AsyncSession, expired: Job | None, urls: UrlBuilder) -> Moved | None:
    if expired is None:
        return None
    await refund_credits(
        session, expired.tenant_id, expired.id, expired.credits_reserved, reason=DEADLINE_EXCEEDED
    )
    return _moved(expired, await notify_subscribers(session, expired, COMPLETED, urls))


async def _expire_queued(
    session: AsyncSession, job_id: uuid.UUID, urls: UrlBuilder
) -> Moved | None:
    expired = await repository.transition(
        session, job_id, from_status=JobStatus.QUEUED, values=_deadline_values(), past_deadline=True
    )
    return await _expired(session, expired, urls)


async def expire_deadline(
    session: AsyncSession, job_id: uuid.UUID, urls: UrlBuilder
) -> Moved | None:
    """`queued → canceled` or `running → canceled` (whichever attempt runs it) once the job's
    deadline has passed (by the database's clock): `error_code` `deadline_exceeded`, refunded
    once, the `completed` webhook scheduled, exactly as a cancel. The worker running it stops
    at its next safe point. None when the job has no deadline yet passed, or is finished."""
    moved = await _expire_queued(session, job_id, urls)
    if moved is not None:
        return moved
    expired = await repository.transition(
        session,
        job_id,
        from_status=JobStatus.RUNNING,
        values=_deadline_values(),
        past_deadline=True,
    )
    return await _expired(session, expired, urls)


async def expire_lease(
    session: AsyncSession, job: Job, max_attempts: int, urls: UrlBuilder
) -> Moved | None:
    """Take back a running attempt whose lease expired (its worker died): `running → queued`
    while attempts remain, else `running → failed` with a refund and its webhook."""
    message = f"the worker running attempt {job.attempts} stopped answering (lease expired)"
    if job.attempts >= max_attempts:
        return await fail(session, job, WORKER_LOST, message, urls)
    return _moved(await _back_to_queue(session, job, error_code=WORKER_LOST, error_message=message))


async def record_progress(session: AsyncSession, job: Job, fraction: float) -> Moved | None:
    """Store a running attempt's progress; None when the attempt no longer holds the job."""
    moved = await repository.transition(
        session,
        job.id,
        from_status=JobStatus.RUNNING,
        attempt=job.attempts,
        values={"progress": fraction},
    )
    return None if moved is None else Moved(moved, change="progress")


async def _back_to_queue(session: AsyncSession, job: Job, **values: Any) -> Job | None:
    return await _end_attempt(session, job, {**values, "status": JobStatus.QUEUED.value})


async def _end_attempt(session: AsyncSession, job: Job, values: dict[str, Any]) -> Job | None:
    """Move the attempt that holds `job` out of `running`; its lease ends with it. None when
    that attempt no longer holds the job (canceled, taken back, finished by a twin run)."""
    return await repository.transition(
        session,
        job.id,
        from_status=JobStatus.RUNNING,
        attempt=job.attempts,
        values={**values, "lease_expires_at": None},
    )


async def announce(
    redis: Redis, queue_name: str, *moves: Moved | None, enqueuer: Enqueuer | None = None
) -> None:
    """After the commit that made `moves`: publish each job's end on `finished` (waking
    synchronous waiters, status streams and the worker rendering a canceled job) or its change
    on `changed`, then enqueue the webhook deliveries (on `enqueuer`, else `redis`).

    Announcing twice is harmless (whoever is woken re-reads the row), and losing an
    announcement too: waiters re-check the row on their own, and the sweeper sends the
    deliveries that are due."""
    for moved in moves:
        if moved is None:
            continue
        if moved.finished:
            await publish_finished(redis, queue_name, moved.job.id)
        else:
            await publish_changed(redis, queue_name, moved.job.id, moved.change)
    for moved in moves:
        for delivery_id in moved.deliveries if moved is not None else ():
            try:
                await enqueue_delivery(enqueuer or redis, queue_name, delivery_id, 1)
            except (RedisError, OSError):
                # The row is committed: the sweeper sends it when Redis is back.
                logger.warning("could not enqueue webhook delivery %s", delivery_id, exc_info=True)
