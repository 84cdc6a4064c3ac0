"""Webhook deliveries that are failing, across every tenant, for operators: those that failed
for good and those waiting for another try after a failed one, newest first, paged."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from relight.core.models import WebhookDelivery
from relight.ops import repository
from relight.ops.requests import PAGE_SIZE, Page, paged, parse_cursor


@dataclass(frozen=True)
class FailingDelivery:
    delivery: WebhookDelivery
    tenant_name: str


async def failing_deliveries(
    session: AsyncSession, *, after: str = "", before: str = "", limit: int = PAGE_SIZE
) -> Page[FailingDelivery]:
    """A page of failing deliveries, newest first (cursors as for the requests list)."""
    older_than, newer_than = parse_cursor("after", after), parse_cursor("before", before)
    fetched = await repository.failing_deliveries(
        session, older_than=older_than, newer_than=newer_than, limit=limit + 1
    )
    rows = [FailingDelivery(delivery=delivery, tenant_name=name) for delivery, name in fetched]
    keys = [(row.delivery.created_at, row.delivery.id) for row in rows]
    return paged(rows, keys, limit, after=older_than is not None, before=newer_than is not None)
