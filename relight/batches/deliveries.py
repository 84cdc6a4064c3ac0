"""A batch's webhook deliveries (its one `batch.completed`), listed and sent again as a
request's are: through the same functions of `relight.webhooks.service`, after the batch is
found to be the tenant's (404 otherwise)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from relight.batches import repository
from relight.webhooks import service as webhooks


async def list_deliveries(
    session: AsyncSession, tenant_id: uuid.UUID, batch_id: uuid.UUID
) -> webhooks.DeliveriesWithAttempts:
    """The batch's deliveries, each with its attempts (404 for another account's or an
    unknown batch)."""
    await repository.get_batch(session, tenant_id, batch_id)
    return await webhooks.deliveries_with_attempts(session, "batch", batch_id)


async def redeliver(
    session: AsyncSession, tenant_id: uuid.UUID, batch_id: uuid.UUID, *, requested_by: str
) -> list[uuid.UUID]:
    """Send a completed batch's webhooks again now: a new round of attempts, same webhook-id
    and body, recorded as asked by `requested_by`; the deliveries' ids. 404 for another
    account's batch; 409 `no_webhook` without a webhook URL, `not_finished` before its end."""
    batch = await repository.get_batch(session, tenant_id, batch_id)
    return await webhooks.start_redelivery(
        session,
        "batch",
        batch.id,
        webhook_url=batch.webhook_url,
        finished=batch.completed_at is not None,
        requested_by=requested_by,
    )
