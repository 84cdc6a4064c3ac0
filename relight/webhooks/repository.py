"""Every query on `webhook_delivery` and `webhook_attempt`, and the tenant's signing secret."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from relight.core.ids import uuid7
from relight.core.models import Tenant, WebhookAttempt, WebhookDelivery, WebhookStatus

# What a delivery belongs to: a job (`job_id`) or a batch (`batch_id`, its `batch.completed`).
OwnerKind = Literal["job", "batch"]


def _owned_by(kind: OwnerKind, owner_id: uuid.UUID) -> ColumnElement[bool]:
    column = WebhookDelivery.batch_id if kind == "batch" else WebhookDelivery.job_id
    return column == owner_id


async def insert_delivery(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    event: str,
    url: str,
    payload: str,
) -> uuid.UUID | None:
    """Create the job's delivery of `event`; its id, or None when the job has it already (a
    job has one delivery per event; the first body stays)."""
    statement = (
        insert(WebhookDelivery)
        .values(
            id=uuid7(),
            tenant_id=tenant_id,
            job_id=job_id,
            event=event,
            url=url,
            payload=payload,
        )
        .on_conflict_do_nothing(index_elements=["job_id", "event"])
        .returning(WebhookDelivery.id)
    )
    delivery_id: uuid.UUID | None = (await session.execute(statement)).scalar_one_or_none()
    return delivery_id


async def insert_batch_delivery(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    batch_id: uuid.UUID,
    event: str,
    url: str,
    payload: str,
) -> uuid.UUID | None:
    """Create the batch's delivery of `event`; its id, or None when the batch has it already."""
    statement = (
        insert(WebhookDelivery)
        .values(
            id=uuid7(),
            tenant_id=tenant_id,
            batch_id=batch_id,
            event=event,
            url=url,
            payload=payload,
        )
        .on_conflict_do_nothing(index_elements=["batch_id", "event"])
        .returning(WebhookDelivery.id)
    )
    delivery_id: uuid.UUID | None = (await session.execute(statement)).scalar_one_or_none()
    return delivery_id


async def claim_attempt(
    session: AsyncSession, delivery_id: uuid.UUID, lease_s: float
) -> WebhookDelivery | None:
    """Count one more attempt of a due pending delivery and push its `next_attempt_at` past
    `lease_s`; None if it is not due or not pending."""
    now = datetime.now(UTC)
    result = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == WebhookStatus.PENDING.value,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(
            attempts=WebhookDelivery.attempts + 1,
            next_attempt_at=now + timedelta(seconds=lease_s),
        )
        .returning(WebhookDelivery)
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


async def record_attempt(
    session: AsyncSession, attempt: WebhookAttempt, values: dict[str, Any]
) -> None:
    """Store an attempt and set `values` on its delivery."""
    session.add(attempt)
    await session.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == attempt.delivery_id).values(**values)
    )
    await session.flush()


async def due_deliveries(session: AsyncSession, limit: int = 500) -> list[tuple[uuid.UUID, int]]:
    """Pending deliveries whose next attempt is due: `(id, attempts so far)`."""
    rows = await session.execute(
        select(WebhookDelivery.id, WebhookDelivery.attempts)
        .where(
            WebhookDelivery.status == WebhookStatus.PENDING.value,
            WebhookDelivery.next_attempt_at <= func.now(),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    return [(row.id, row.attempts) for row in rows]


async def deliveries_of(
    session: AsyncSession, kind: OwnerKind, owner_id: uuid.UUID
) -> list[WebhookDelivery]:
    """The deliveries of the job or the batch, oldest first."""
    result = await session.scalars(
        select(WebhookDelivery)
        .where(_owned_by(kind, owner_id))
        .order_by(WebhookDelivery.created_at)
    )
    return list(result.all())


async def attempts_of(
    session: AsyncSession, delivery_ids: Sequence[uuid.UUID]
) -> list[WebhookAttempt]:
    """The attempts of these deliveries, by attempt number."""
    result = await session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(delivery_ids))
        .order_by(WebhookAttempt.number)
    )
    return list(result.all())


async def start_round(
    session: AsyncSession, kind: OwnerKind, owner_id: uuid.UUID, requested_by: str
) -> list[uuid.UUID]:
    """Make every delivery of the job or the batch pending and due now, as a new round of
    attempts that records `requested_by`; their ids."""
    result = await session.execute(
        update(WebhookDelivery)
        .where(_owned_by(kind, owner_id))
        .values(
            status=WebhookStatus.PENDING.value,
            next_attempt_at=func.now(),
            round_start=WebhookDelivery.attempts,
            round_requested_by=requested_by,
        )
        .returning(WebhookDelivery.id)
    )
    return list(result.scalars().all())


async def tenant_with_secret(
    session: AsyncSession, tenant_id: uuid.UUID, new_secret: str, *, for_update: bool
) -> Tenant:
    """The tenant, re-read; `new_secret` becomes its signing secret if it had none."""
    await session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id, Tenant.webhook_secret.is_(None))
        .values(webhook_secret=new_secret)
    )
    tenant = await session.get(
        Tenant, tenant_id, populate_existing=True, with_for_update=for_update
    )
    assert tenant is not None
    return tenant


async def flush(session: AsyncSession) -> None:
    """Write the changes made to loaded rows (a rotated secret)."""
    await session.flush()
