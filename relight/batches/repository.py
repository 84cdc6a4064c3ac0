"""Every query on `batch`, and the reads of a batch's items (its `job` rows and their outputs).

An item is an ordinary job; its status is written only by `relight.jobs.lifecycle`. Here, the
batch row is inserted, read, locked, and stamped `completed_at` once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from relight.core.errors import RequestNotFound
from relight.core.models import Batch, Job, JobStatus

OPEN_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


async def insert_batch(session: AsyncSession, batch: Batch) -> bool:
    """Insert `batch`; False when its Idempotency-Key is taken (by a batch committed since, or
    in flight: the insert then waits for that transaction to end)."""
    statement = (
        insert(Batch)
        .values(
            id=batch.id,
            tenant_id=batch.tenant_id,
            item_count=batch.item_count,
            webhook_url=batch.webhook_url,
            webhook_events=batch.webhook_events,
            idempotency_key=batch.idempotency_key,
            request_hash=batch.request_hash,
            http_request_id=batch.http_request_id,
            created_at=batch.created_at,
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
        .returning(Batch.id)
    )
    return (await session.execute(statement)).scalar_one_or_none() is not None


async def find_by_idempotency_key(
    session: AsyncSession, tenant_id: uuid.UUID, key: str
) -> Batch | None:
    return await session.scalar(
        select(Batch).where(Batch.tenant_id == tenant_id, Batch.idempotency_key == key)
    )


async def get_batch(session: AsyncSession, tenant_id: uuid.UUID, batch_id: uuid.UUID) -> Batch:
    """The tenant's batch; another tenant's id is as unknown as a made-up one."""
    batch = await session.scalar(
        select(Batch)
        .where(Batch.id == batch_id, Batch.tenant_id == tenant_id)
        .execution_options(populate_existing=True)
    )
    if batch is None:
        raise RequestNotFound(f"no batch {batch_id}")
    return batch


async def lock_batch(session: AsyncSession, batch_id: uuid.UUID) -> Batch | None:
    """The batch, its row locked until the caller's transaction ends."""
    return await session.scalar(
        select(Batch)
        .where(Batch.id == batch_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def open_items(session: AsyncSession, batch_id: uuid.UUID) -> int:
    """How many of the batch's items are still queued or running."""
    count = await session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.batch_id == batch_id, Job.status.in_(OPEN_STATUSES))
    )
    return int(count or 0)


async def mark_completed(session: AsyncSession, batch_id: uuid.UUID) -> Batch | None:
    """Stamp `completed_at` if (and only if) nobody did yet: the batch, or None."""
    result = await session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.completed_at.is_(None))
        .values(completed_at=datetime.now(UTC))
        .returning(Batch)
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


async def items_of(session: AsyncSession, batch_id: uuid.UUID) -> list[Job]:
    """The batch's items in the order they were submitted (ids are time-ordered)."""
    result = await session.scalars(
        select(Job)
        .where(Job.batch_id == batch_id)
        .order_by(Job.id)
        .execution_options(populate_existing=True)
    )
    return list(result.all())


async def open_item_ids(session: AsyncSession, batch_id: uuid.UUID) -> list[uuid.UUID]:
    """The ids of the batch's items still queued or running, in submission order."""
    result = await session.scalars(
        select(Job.id)
        .where(Job.batch_id == batch_id, Job.status.in_(OPEN_STATUSES))
        .order_by(Job.id)
    )
    return list(result.all())


async def list_batches(
    session: AsyncSession, tenant_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> list[Batch]:
    """The tenant's batches older than `before` (a batch id; None: from the newest), newest
    first; ids are time-ordered (UUIDv7), so the id is the cursor."""
    query = select(Batch).where(Batch.tenant_id == tenant_id)
    if before is not None:
        query = query.where(Batch.id < before)
    return list((await session.scalars(query.order_by(Batch.id.desc()).limit(limit))).all())


@dataclass(frozen=True)
class ItemTally:
    """How many items of a batch are in one status, and their credits."""

    batch_id: uuid.UUID
    status: JobStatus
    count: int
    credits_reserved: int
    credits_charged: int


async def item_tallies(session: AsyncSession, batch_ids: list[uuid.UUID]) -> list[ItemTally]:
    """The items of the batches `batch_ids` counted by batch and status, in one query."""
    if not batch_ids:
        return []
    rows = await session.execute(
        select(
            Job.batch_id,
            Job.status,
            func.count(),
            func.coalesce(func.sum(Job.credits_reserved), 0),
            func.coalesce(func.sum(Job.credits_charged), 0),
        )
        .where(Job.batch_id.in_(batch_ids))
        .group_by(Job.batch_id, Job.status)
    )
    return [
        ItemTally(batch_id, JobStatus(status), int(count), int(reserved), int(charged))
        for batch_id, status, count, reserved, charged in rows
        if batch_id is not None  # never, by the query; says so to the type checker
    ]
