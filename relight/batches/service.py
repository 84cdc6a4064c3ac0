"""Batches: a set of ordinary requests submitted together, and what they share.

A batch only aggregates. Each item is a normal job made by the same function a single submit
uses (`relight.jobs.service.submit_job`), so it is billed, queued (fair turns with other
tenants), retried, canceled and streamed as one request. What the batch adds:

- all or nothing: the items' credits and in-flight places are checked with the tenant's row
  locked (`check_batch_affordable`) and reserved in one transaction, so either every item
  exists, paid for, or none does;
- one Idempotency-Key for the whole batch (same key and body: the same batch again);
- one `batch.completed` webhook, decided inside the transaction that ends the last item
  (`on_job_event`, a job subscriber): that transaction locks the batch row, counts the items
  still open, and stamps `completed_at` under a `completed_at IS NULL` guard. Two workers
  ending the last two items at once take the lock in turn, and the second, reading after the
  first committed, is the one that finds none open: exactly one delivery is written.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

import orjson
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.batches import repository
from relight.batches.schemas import (
    BATCH_COMPLETED,
    ITEM_EVENTS,
    BatchAccepted,
    BatchItemView,
    BatchList,
    BatchStatus,
    BatchSummary,
    BatchView,
)
from relight.core.config import Settings
from relight.core.egress import check_url
from relight.core.errors import Conflict, RelightError
from relight.core.ids import uuid7
from relight.core.models import Batch, Job, JobOutput, JobStatus
from relight.core.params import RelightParams, SubmitOptions
from relight.core.storage import Storage
from relight.core.storage.urls import UrlBuilder
from relight.core.unit_of_work import unit_of_work
from relight.credits.pricing import price
from relight.credits.reservation import check_batch_affordable
from relight.jobs import repository as jobs
from relight.jobs.inputs import SubjectSource
from relight.jobs.lifecycle import Moved
from relight.jobs.schemas import PublicStatus, SubmitBody
from relight.jobs.service import (
    EnqueueInLane,
    IdempotencyKeyReused,
    cancel_request,
    enqueue_submitted,
    live_gpu_nodes,
    request_hash,
    submit_job,
)
from relight.jobs.subscribers import COMPLETED
from relight.jobs.views import request_view
from relight.tenants.auth_cache import TenantSnapshot
from relight.webhooks.service import schedule_batch_delivery

# A message that starts by naming the field it is about (`subject_image is neither ...`).
FIELD_FIRST = re.compile(r"^([a-z_]+)[ :]")


@dataclass(frozen=True)
class BatchItem:
    """One item, read and validated as a single submit's body is."""

    params: RelightParams
    options: SubmitOptions
    subject: SubjectSource
    background: SubjectSource | None = None


@dataclass(frozen=True)
class BatchSubmission:
    batch: Batch
    items: list[Job]
    replayed: bool


def item_error(index: int, error: RelightError) -> RelightError:
    """`error`, about the batch's item `index`: its message and field name the item
    (`requests[3].subject_image: ...`), its status and code stay."""
    prefix = f"requests[{index}]"
    extra = dict(error.extra)
    message = error.message
    named = FIELD_FIRST.match(message)
    field = extra.get("field")
    if named is not None and named.group(1) in SubmitBody.model_fields:
        field = field if isinstance(field, str) else named.group(1)
        message = f"{prefix}.{message}"
    else:
        message = f"{prefix}: {message}"
    extra["field"] = f"{prefix}.{field}" if isinstance(field, str) else prefix
    extra.pop("details", None)
    extra["index"] = index
    return RelightError(message, status_code=error.status_code, code=error.code, extra=extra)


def batch_hash(items: Sequence[BatchItem], webhook_url: str | None, events: list[str]) -> str:
    """A digest of everything that defines the batch, to recognise an idempotent retry."""
    fields = {
        "items": [
            request_hash(item.params, item.options, item.subject, item.background) for item in items
        ],
        "webhook_url": webhook_url,
        "webhook_events": events,
    }
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _item_options(item: BatchItem, webhook_url: str | None, events: list[str]) -> SubmitOptions:
    """The item's options: its backend, and the batch's webhook (each item's own events only
    where the batch lists them; no URL: the account's, as for a single submit)."""
    item_events = [event for event in events if event in ITEM_EVENTS]
    return item.options.model_copy(
        update={"webhook_url": webhook_url, "webhook_events": item_events}
    )


async def submit_batch(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    storage: Storage,
    redis: Redis,
    enqueue: EnqueueInLane,
    tenant: TenantSnapshot,
    items: Sequence[BatchItem],
    webhook_url: str | None,
    webhook_events: list[str],
    idempotency_key: str | None,
    http_request_id: str | None,
    cancel_after: timedelta | None = None,
) -> BatchSubmission:
    """Create the batch and every item in one transaction (all or nothing), commit, then hand
    each item to the workers in its lane (its `priority`), with its deadline: `cancel_after`
    (the `Cancel-After` header) gives every item the deadline a single submit would get. A
    retry with the same Idempotency-Key and body answers the batch made the first time
    (`replayed`); with another body, 422 `idempotency_key_reused`."""
    if webhook_url is not None:
        check_url(webhook_url, settings.egress_policy, field="webhook_url")
    digest = batch_hash(items, webhook_url, webhook_events)
    async with unit_of_work(sessionmaker) as uow:
        session = uow.session
        if idempotency_key is not None:
            existing = await repository.find_by_idempotency_key(session, tenant.id, idempotency_key)
            if existing is not None:
                return await _replay(session, existing, digest, idempotency_key)
        created_at = datetime.now(UTC)
        batch = Batch(
            id=uuid7(created_at),
            tenant_id=tenant.id,
            item_count=len(items),
            webhook_url=webhook_url or tenant.webhook_url,
            webhook_events=list(webhook_events),
            idempotency_key=idempotency_key,
            request_hash=digest,
            http_request_id=http_request_id,
            created_at=created_at,
        )
        if not await repository.insert_batch(session, batch):
            assert idempotency_key is not None
            return await _after_lost_race(session, tenant, idempotency_key, digest)
        cost = sum(price(item.params, settings.credits_per_default_image) for item in items)
        await check_batch_affordable(session, tenant.id, cost=cost, count=len(items))
        created = []
        for index, item in enumerate(items):
            options = _item_options(item, webhook_url, webhook_events)
            try:
                submission = await submit_job(
                    session,
                    settings=settings,
                    storage=storage,
                    tenant=tenant,
                    params=item.params,
                    options=options,
                    subject=item.subject,
                    background=item.background,
                    idempotency_key=None,
                    live_gpu_nodes=await live_gpu_nodes(settings, redis, item.params, options),
                    http_request_id=http_request_id,
                    batch_id=batch.id,
                    cancel_after=cancel_after,
                )
            except RelightError as error:
                raise item_error(index, error) from error
            job = submission.job
            created.append(job)
            uow.after_commit(partial(enqueue_submitted, enqueue, job, tenant.weight))
    return BatchSubmission(batch=batch, items=created, replayed=False)


async def _replay(session: AsyncSession, existing: Batch, digest: str, key: str) -> BatchSubmission:
    if existing.request_hash != digest:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was already used with a different batch body"
        )
    items = await repository.items_of(session, existing.id)
    return BatchSubmission(batch=existing, items=items, replayed=True)


async def _after_lost_race(
    session: AsyncSession, tenant: TenantSnapshot, key: str, digest: str
) -> BatchSubmission:
    existing = await repository.find_by_idempotency_key(session, tenant.id, key)
    if existing is None:
        raise Conflict(
            f"a batch with Idempotency-Key {key!r} is in flight; retry shortly",
            code="idempotency_key_in_flight",
        )
    return await _replay(session, existing, digest, key)


def accepted_view(submission: BatchSubmission, urls: UrlBuilder) -> BatchAccepted:
    batch = submission.batch
    return BatchAccepted(
        batch_id=batch.id,
        request_ids=[job.id for job in submission.items],
        status_url=urls.batch_url(batch.id),
        cancel_url=urls.batch_cancel_url(batch.id),
        credits_reserved=sum(job.credits_reserved for job in submission.items),
    )


def batch_status(statuses: Iterable[JobStatus]) -> BatchStatus:
    """COMPLETED once every item ended; QUEUED while none has started; else PROCESSING."""
    seen = set(statuses)
    if all(status.is_terminal for status in seen):
        return "COMPLETED"
    if seen == {JobStatus.QUEUED}:
        return "QUEUED"
    return "PROCESSING"


def batch_view(
    batch: Batch, items: Sequence[Job], outputs: Sequence[JobOutput], urls: UrlBuilder
) -> BatchView:
    by_job: dict[uuid.UUID, list[JobOutput]] = {}
    for output in outputs:
        by_job.setdefault(output.job_id, []).append(output)
    views = []
    for job in items:
        record = request_view(job, by_job.get(job.id, []), urls)
        views.append(
            BatchItemView(
                request_id=job.id,
                status=record.status,
                output=record.output,
                error=record.error,
                error_code=record.error_code,
            )
        )
    counts = Counter(PublicStatus(job.job_status.public) for job in items)
    return BatchView(
        batch_id=batch.id,
        status=batch_status(job.job_status for job in items),
        counts=dict(counts),
        requests=views,
        credits_reserved=sum(job.credits_reserved for job in items),
        credits_charged=sum(job.credits_charged for job in items),
        created_at=batch.created_at,
        completed_at=batch.completed_at,
        status_url=urls.batch_url(batch.id),
        cancel_url=urls.batch_cancel_url(batch.id),
    )


async def _view(session: AsyncSession, batch: Batch, urls: UrlBuilder) -> BatchView:
    items = await repository.items_of(session, batch.id)
    outputs = await jobs.get_outputs(session, [job.id for job in items], flush=True)
    return batch_view(batch, items, outputs, urls)


async def get_batch(
    session: AsyncSession, tenant_id: uuid.UUID, batch_id: uuid.UUID, urls: UrlBuilder
) -> BatchView:
    """The tenant's batch as it stands (404 for another account's or an unknown id)."""
    batch = await repository.get_batch(session, tenant_id, batch_id)
    return await _view(session, batch, urls)


async def list_batches(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    urls: UrlBuilder,
    *,
    limit: int,
    before: uuid.UUID | None,
) -> BatchList:
    """Up to `limit` of the tenant's batches older than `before` (a batch id, the previous
    page's `next_cursor`; None: from the newest), newest first, each with its counts."""
    found = await repository.list_batches(session, tenant_id, limit=limit + 1, before=before)
    page = found[:limit]
    tallies: dict[uuid.UUID, list[repository.ItemTally]] = {}
    for tally in await repository.item_tallies(session, [batch.id for batch in page]):
        tallies.setdefault(tally.batch_id, []).append(tally)
    return BatchList(
        data=[batch_summary(batch, tallies.get(batch.id, []), urls) for batch in page],
        next_cursor=str(page[-1].id) if len(found) > limit else None,
    )


def batch_summary(
    batch: Batch, tallies: Sequence[repository.ItemTally], urls: UrlBuilder
) -> BatchSummary:
    counts: Counter[PublicStatus] = Counter()
    for tally in tallies:
        counts[PublicStatus(tally.status.public)] += tally.count
    return BatchSummary(
        batch_id=batch.id,
        status=batch_status(tally.status for tally in tallies),
        counts=dict(counts),
        item_count=batch.item_count,
        credits_reserved=sum(tally.credits_reserved for tally in tallies),
        credits_charged=sum(tally.credits_charged for tally in tallies),
        created_at=batch.created_at,
        completed_at=batch.completed_at,
        status_url=urls.batch_url(batch.id),
        cancel_url=urls.batch_cancel_url(batch.id),
    )


async def cancel_batch(
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID,
    batch_id: uuid.UUID,
    urls: UrlBuilder,
    *,
    redis: Redis,
    queue_name: str,
) -> list[Moved]:
    """Cancel every item of the tenant's batch that has not ended, each as a single cancel is
    (`relight.jobs.service.cancel_request`: refunded, announced) in a transaction of its own:
    an item's transaction locks its job, then the batch (to decide `batch.completed`), the
    order a worker ending an item takes them in, so a cancel never deadlocks with a worker.
    An item that ends meanwhile stays as it ended. What was canceled."""
    async with sessionmaker() as session:
        await repository.get_batch(session, tenant_id, batch_id)
        open_ids = await repository.open_item_ids(session, batch_id)
    canceled = []
    for job_id in open_ids:
        async with unit_of_work(sessionmaker) as uow:
            try:
                moved = await cancel_request(
                    uow.session, tenant_id, job_id, urls, redis=redis, queue_name=queue_name
                )
            except Conflict:
                continue  # it ended (completed or failed) before the cancel reached it
            canceled.append(moved)
    return canceled


async def on_job_event(
    session: AsyncSession, job: Job, event: str, urls: UrlBuilder
) -> uuid.UUID | None:
    """A job subscriber: when an item of a batch ends, end the batch if it was the last one
    open, in the same transaction; the `batch.completed` delivery, if the batch has a webhook
    that asked for it."""
    if event != COMPLETED or job.batch_id is None:
        return None
    # The lock orders the item transactions of one batch: whoever counts after another
    # committed sees that item ended (each statement reads what was committed before it).
    batch = await repository.lock_batch(session, job.batch_id)
    if batch is None or batch.completed_at is not None:
        return None
    if await repository.open_items(session, batch.id) > 0:
        return None
    completed = await repository.mark_completed(session, batch.id)
    if completed is None or not completed.webhook_url:
        return None
    if BATCH_COMPLETED not in completed.webhook_events:
        return None
    view = await _view(session, completed, urls)
    body = orjson.dumps({"event": BATCH_COMPLETED, **view.model_dump(mode="json")})
    return await schedule_batch_delivery(
        session,
        tenant_id=completed.tenant_id,
        batch_id=completed.id,
        event=BATCH_COMPLETED,
        url=completed.webhook_url,
        body=body,
    )
