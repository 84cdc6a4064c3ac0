"""Submitting and canceling jobs: the rules, in one unit of work that the caller commits.

The status changes themselves (and the refund a cancel owes) are `relight.jobs.lifecycle`'s."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Protocol

import orjson
from redis.asyncio import Redis
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.backends.availability import available_backends
from relight.core import metrics
from relight.core.config import Settings
from relight.core.egress import check_url
from relight.core.errors import Conflict, Forbidden, InvalidParameter
from relight.core.ids import uuid7
from relight.core.image_metadata import strip_metadata
from relight.core.models import Job, JobStatus, Tenant
from relight.core.params import Backend, Priority, RelightParams, SubmitOptions
from relight.core.storage import Storage
from relight.core.storage.urls import UrlBuilder
from relight.core.unit_of_work import after_commit, unit_of_work
from relight.credits.pricing import price
from relight.credits.reservation import reserve_credits
from relight.jobs import lifecycle, repository
from relight.jobs.inputs import SubjectSource
from relight.jobs.lifecycle import Moved
from relight.nodes.registry import discovered_gpu_nodes
from relight.tenants.auth_cache import TenantSnapshot

# Hands a committed job to the workers: `(job id, tenant id, tenant weight)`.
Enqueue = Callable[[uuid.UUID, uuid.UUID, int], Awaitable[None]]


class EnqueueInLane(Protocol):
    """An `Enqueue` that also takes the job's lane (the api's `AppState.enqueue`): the job is
    queued in its `priority` lane."""

    def __call__(
        self,
        job_id: uuid.UUID,
        tenant_id: uuid.UUID,
        weight: int | None = None,
        *,
        priority: str = Priority.NORMAL.value,
    ) -> Awaitable[None]: ...


def enqueue_submitted(enqueue: EnqueueInLane, job: Job, weight: int) -> Awaitable[None]:
    """Hand a committed job to the workers with its tenant's weight and its lane (what a
    submit, single or in a batch, registers after its commit)."""
    return enqueue(job.id, job.tenant_id, weight, priority=job.priority)


class IdempotencyKeyReused(InvalidParameter):
    code = "idempotency_key_reused"


@dataclass(frozen=True)
class Submission:
    job: Job
    replayed: bool


def request_hash(
    params: RelightParams,
    options: SubmitOptions,
    subject: SubjectSource,
    background: SubjectSource | None = None,
) -> str:
    """A digest of everything that defines the request, to recognise an idempotent retry."""
    # The normal lane is left out, so digests made before lanes existed still match.
    lane = {"priority"} if options.priority is Priority.NORMAL else set()
    fields: dict[str, object] = {
        "params": params.model_dump(mode="json"),
        "options": options.model_dump(mode="json", exclude=lane),
        "subject": subject.digest,
    }
    if background is not None:
        fields["background"] = background.digest
    canonical = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def resolve_seed(seed: int | None) -> int:
    """Segmind treats a missing seed and -1 alike: pick one, and record it."""
    if seed is None or seed < 0:
        return secrets.randbelow(2**32)
    return seed


def check_backend(
    settings: Settings,
    backend: Backend,
    tenant: TenantSnapshot | Tenant,
    *,
    live_gpu_nodes: bool = False,
    backgrounds: bool = False,
) -> None:
    """403 unless the requested backend (or, for `auto`, some backend) is both configured
    here and allowed for this tenant (and, for `backgrounds`, can relight onto one)."""
    if backgrounds and backend not in (Backend.AUTO, Backend.GPU):
        raise Forbidden(
            f"backend {backend.value!r} cannot relight onto a background: only GPU nodes with "
            "IC-Light's background model can (backend 'gpu' or 'auto')",
            code="background_not_served",
        )
    available = available_backends(settings, live_gpu_nodes=live_gpu_nodes, backgrounds=backgrounds)
    usable = {b for b in available if b.value in tenant.allowed_backends}
    if backend is Backend.AUTO:
        if not usable and backgrounds:
            raise Forbidden(
                "no backend here can relight onto a background: that needs a GPU node with "
                "IC-Light's background model (iclight_sd15_fbc.safetensors)",
                code="background_not_served",
            )
        if not usable:
            raise Forbidden("no backend is available to this account", code="backend_unavailable")
        return
    if backend not in usable:
        names = ", ".join(sorted(b.value for b in usable)) or "none"
        raise Forbidden(
            f"backend {backend.value!r} is not available to this account (available: {names})",
            code="backend_not_allowed",
        )


def _replay(existing: Job, digest: str, key: str) -> Submission:
    if existing.request_hash != digest:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was already used with a different request body"
        )
    return Submission(job=existing, replayed=True)


async def submit_request(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    autocommit_sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    storage: Storage,
    redis: Redis,
    enqueue: EnqueueInLane,
    tenant: TenantSnapshot,
    params: RelightParams,
    options: SubmitOptions,
    subject: SubjectSource,
    background: SubjectSource | None,
    idempotency_key: str | None,
    http_request_id: str | None,
    cancel_after: timedelta | None = None,
) -> Submission:
    """A submit, whole: validate, store the inline images, reserve the price and insert the
    job (`submit_job`), commit, then hand the new job to the workers (`enqueue`, only once the
    job is committed; never for a replay). `cancel_after` (the `Cancel-After` header) gives
    the request a deadline.

    An inline image is stored before the commit (a failed store undoes the paid job), so it
    needs a transaction; otherwise the job and its reservation are one statement, and an
    autocommit session saves the BEGIN and COMMIT round trips."""
    inline = subject.data is not None or (background is not None and background.data is not None)
    async with unit_of_work(sessionmaker if inline else autocommit_sessionmaker) as uow:
        submission = await submit_job(
            uow.session,
            settings=settings,
            storage=storage,
            tenant=tenant,
            params=params,
            options=options,
            subject=subject,
            background=background,
            idempotency_key=idempotency_key,
            live_gpu_nodes=await _live_gpu_nodes(settings, redis, params, options),
            http_request_id=http_request_id,
            cancel_after=cancel_after,
        )
        if not submission.replayed:
            uow.after_commit(partial(enqueue_submitted, enqueue, submission.job, tenant.weight))
    return submission


async def live_gpu_nodes(
    settings: Settings, redis: Redis, params: RelightParams, options: SubmitOptions
) -> bool:
    """Whether a GPU node can serve this request now, for `submit_job`'s `live_gpu_nodes`
    (a batch asks it for each of its items)."""
    return await _live_gpu_nodes(settings, redis, params, options)


async def _live_gpu_nodes(
    settings: Settings, redis: Redis, params: RelightParams, options: SubmitOptions
) -> bool:
    """Whether heartbeats show a GPU node that can serve this request (`discovered_gpu_nodes`);
    a Redis round trip only when the answer can change the outcome."""
    backgrounds = params.background_source is not None
    return await discovered_gpu_nodes(
        redis,
        settings.gpu_namespace,
        enabled=settings.gpu_discovery
        and (
            options.backend is Backend.GPU
            or backgrounds
            or not available_backends(settings) - {Backend.GPU}
        ),
        backgrounds=backgrounds,
    )


async def submit_job(
    session: AsyncSession,
    *,
    settings: Settings,
    storage: Storage,
    tenant: TenantSnapshot,
    params: RelightParams,
    options: SubmitOptions,
    subject: SubjectSource,
    idempotency_key: str | None,
    live_gpu_nodes: bool = False,
    http_request_id: str | None = None,
    background: SubjectSource | None = None,
    batch_id: uuid.UUID | None = None,
    cancel_after: timedelta | None = None,
) -> Submission:
    """Reserve the price and create the job; the caller commits, then enqueues
    (`enqueue_submitted`). `http_request_id` (the submit's X-Request-ID) is kept for the job's
    log lines; `batch_id` makes the job an item of that batch (`relight.batches`).
    `cancel_after` sets the job's deadline, from its acceptance: unfinished then, it
    is canceled as `deadline_exceeded` (`relight.jobs.deadlines`). The lane
    (`options.priority`) must be one the tenant may use (403 `priority_not_allowed`).

    An inline subject is stored before the caller commits, so run this in a transaction when
    `subject.data` is set: a failure to store then undoes the paid job. Without one, an
    autocommit session is enough (the job and its reservation are one statement)."""
    digest = request_hash(params, options, subject, background)
    if idempotency_key is not None:
        existing = await repository.find_by_idempotency_key(session, tenant.id, idempotency_key)
        if existing is not None:
            return _replay(existing, digest, idempotency_key)
    _check_submission(settings, tenant, params, options, live_gpu_nodes=live_gpu_nodes)
    cost = price(params, settings.credits_per_default_image)
    job = _new_job(
        tenant,
        params,
        options,
        subject,
        background,
        cost=cost,
        idempotency_key=idempotency_key,
        digest=digest,
        http_request_id=http_request_id,
        batch_id=batch_id,
    )
    job.deadline_at = None if cancel_after is None else job.created_at + cancel_after
    replayed = await _insert(session, job, cost, tenant, idempotency_key, digest)
    if replayed is not None:
        return replayed
    metrics.count_job_submitted(session, options.backend.value)
    await _store_input(storage, job.input_storage_key, subject)
    if background is not None:
        await _store_input(storage, job.background_storage_key, background)
    return Submission(job=job, replayed=False)


def _check_submission(
    settings: Settings,
    tenant: TenantSnapshot,
    params: RelightParams,
    options: SubmitOptions,
    *,
    live_gpu_nodes: bool,
) -> None:
    """Refuse a backend this account cannot use here, or a webhook URL we may not call."""
    check_backend(
        settings,
        options.backend,
        tenant,
        live_gpu_nodes=live_gpu_nodes,
        backgrounds=params.background_source is not None,
    )
    if options.webhook_url is not None:
        check_url(options.webhook_url, settings.egress_policy, field="webhook_url")
    check_lane(options.priority, tenant)


def check_lane(priority: Priority, tenant: TenantSnapshot | Tenant) -> None:
    """403 `priority_not_allowed` unless the tenant may submit to lane `priority`."""
    allowed = tuple(tenant.allowed_lanes)
    if priority.value not in allowed:
        names = ", ".join(lane for lane in (p.value for p in Priority) if lane in allowed)
        raise Forbidden(
            f"priority {priority.value!r} is not available to this account (available: "
            f"{names or 'none'}); an operator can allow it",
            code="priority_not_allowed",
        )


def _new_job(
    tenant: TenantSnapshot,
    params: RelightParams,
    options: SubmitOptions,
    subject: SubjectSource,
    background: SubjectSource | None,
    *,
    cost: int,
    idempotency_key: str | None,
    digest: str,
    http_request_id: str | None,
    batch_id: uuid.UUID | None = None,
) -> Job:
    """The job row a submit creates (`queued`); inline images get their storage keys."""
    # The id encodes the instant it was made, and `created_at` is that instant, so listing by
    # id (newest first, the id as cursor) lists by `created_at` too.
    created_at = datetime.now(UTC)
    job_id = uuid7(created_at)
    input_key = f"inputs/{tenant.id}/{job_id}" if subject.data is not None else None
    background_key = None
    if background is not None and background.data is not None:
        background_key = f"inputs/{tenant.id}/{job_id}.background"
    return Job(
        id=job_id,
        created_at=created_at,
        tenant_id=tenant.id,
        api_key_id=tenant.api_key_id,
        status=JobStatus.QUEUED.value,
        params=params.model_dump(mode="json", exclude={"seed"}),
        input_url=subject.url,
        input_storage_key=input_key,
        background_url=background.url if background is not None else None,
        background_storage_key=background_key,
        seed=resolve_seed(params.seed),
        backend_requested=options.backend.value,
        credits_reserved=cost,
        idempotency_key=idempotency_key,
        request_hash=digest,
        webhook_url=options.webhook_url or tenant.webhook_url,
        webhook_events=list(options.webhook_events),
        http_request_id=http_request_id,
        batch_id=batch_id,
        priority=options.priority.value,
    )


async def _insert(
    session: AsyncSession,
    job: Job,
    cost: int,
    tenant: TenantSnapshot,
    idempotency_key: str | None,
    digest: str,
) -> Submission | None:
    """Insert `job` with its reservation; None when inserted, else the replay of the
    submission with the same Idempotency-Key that won the race."""
    if idempotency_key is None or await repository.is_autocommit(session):
        # One statement creates the job with its reservation: nothing to undo on a refusal or a
        # lost idempotency race, so no savepoint (and, in autocommit, no BEGIN/COMMIT either).
        try:
            await reserve_credits(session, job, cost)
        except IntegrityError:
            if idempotency_key is None:
                raise
            return await _after_lost_race(session, tenant, idempotency_key, digest)
    else:
        try:
            # A savepoint, so that losing an idempotency race leaves the transaction usable.
            async with session.begin_nested():
                await reserve_credits(session, job, cost)
        except IntegrityError:
            return await _after_lost_race(session, tenant, idempotency_key, digest)
    return None


async def _after_lost_race(
    session: AsyncSession, tenant: TenantSnapshot, idempotency_key: str, digest: str
) -> Submission:
    existing = await repository.find_by_idempotency_key(session, tenant.id, idempotency_key)
    if existing is None:
        raise Conflict(
            f"a request with Idempotency-Key {idempotency_key!r} is in flight; retry shortly",
            code="idempotency_key_in_flight",
        ) from None
    return _replay(existing, digest, idempotency_key)


async def _store_input(storage: Storage, input_key: str | None, subject: SubjectSource) -> None:
    """Store an inline subject: only once the request is paid for, so a refused request
    leaves nothing on disk; and without EXIF/GPS and other metadata (pixels untouched)."""
    if input_key is not None and subject.data is not None:
        # Off the event loop: a large image takes a while to walk through.
        await storage.put(input_key, await asyncio.to_thread(strip_metadata, subject.data))


async def cancel_job(
    session: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID, urls: UrlBuilder
) -> Moved:
    """Cancel the tenant's queued or running job and refund it (`lifecycle.cancel`); canceling
    twice is harmless. What happened, to `announce` after the commit: on a repeat, the job as it
    stands with nothing to deliver (announcing its end again wakes nobody wrongly).

    A running job is canceled here, in the database, by the same guarded `running → canceled`
    update that completion, retry and the sweeper race with: whichever commits first wins, so
    the job ends either canceled and refunded or completed and charged, never both. The worker
    holding it sees the job leave `running` and stops at its next safe point (`execution`)."""
    job = await repository.get_job(session, tenant_id, job_id)
    canceled = await lifecycle.cancel(session, job.id, urls)
    if canceled is not None:
        return canceled
    await repository.refresh(session, job)
    if job.job_status is JobStatus.CANCELED:
        return Moved(job)
    raise Conflict(
        f"request {job.id} is {job.job_status.public} and can no longer be canceled",
        code="not_cancelable",
    )


async def cancel_request(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    urls: UrlBuilder,
    *,
    redis: Redis,
    queue_name: str,
) -> Moved:
    """`cancel_job`, then, once the caller's transaction commits, its announcement: it wakes
    the request's waiters, status streams and the worker running it (again, harmlessly, on a
    repeat), then queues its webhook (`lifecycle.announce`)."""
    canceled = await cancel_job(session, tenant_id, job_id, urls)
    after_commit(session, partial(lifecycle.announce, redis, queue_name, canceled))
    return canceled
