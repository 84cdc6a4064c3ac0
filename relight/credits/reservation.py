"""Reserving a new job's price: where a submit takes credits.

One statement (one round trip, `repository.reserve_and_insert_job`) takes the price and an
in-flight slot from an active tenant that can afford both, writes the `reserve` ledger entry and
inserts the job from the same row, so the three happen together or not at all: a refused tenant
leaves no job and no entry, and a job never exists without its reservation. The job's later
settlement (charge or refund) is `service.charge_credits` / `service.refund_credits`, called by
`relight.jobs.lifecycle`.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from relight.core import metrics
from relight.core.errors import Forbidden, InsufficientCredits
from relight.core.models import Job, TenantStatus
from relight.credits import repository
from relight.credits.service import TooManyJobs, explain_refusal


async def reserve_credits(session: AsyncSession, job: Job, cost: int) -> Job:
    """Reserve `cost` and an in-flight slot for the new `job` and insert it, in one statement.

    Raises 403 (suspended), 406 (not enough credits) or 429 (too many jobs in flight) when the
    tenant is refused, IntegrityError when the idempotency key is taken. `job` comes back with
    the columns the database filled in; it is not in the session.
    """
    row = await repository.reserve_and_insert_job(session, job, cost)
    if row is None:
        await explain_refusal(session, job.tenant_id, cost)
    metrics.count_credits(session, "reserved", cost)
    # What the database filled in (defaults, timestamps); the rest is what was sent.
    for key, value in row.items():
        if key not in job.__dict__:
            setattr(job, key, value)
    return job


async def check_batch_affordable(
    session: AsyncSession, tenant_id: uuid.UUID, *, cost: int, count: int
) -> None:
    """Lock the tenant's row and refuse, before any of a batch's `count` jobs is reserved, a
    batch it cannot have whole: suspended (403), short of the `cost` of all of them (406,
    naming the shortfall) or without `count` free in-flight slots (429). The lock holds until
    the caller's transaction ends, so the reservations that follow (`reserve_credits`, one per
    job) find what was checked: all of them succeed, or the transaction rolls back whole."""
    tenant = await repository.lock_refusal_state(session, tenant_id)
    if tenant is None or tenant.status != TenantStatus.ACTIVE.value:
        raise Forbidden("this account is suspended", code="tenant_suspended")
    if tenant.credit_balance < cost:
        shortfall = cost - tenant.credit_balance
        raise InsufficientCredits(
            f"insufficient credits for the batch: its {count} requests need {cost}, "
            f"the balance has {tenant.credit_balance} (short by {shortfall}); nothing was "
            "reserved",
            extra={"required": cost, "available": tenant.credit_balance, "shortfall": shortfall},
        )
    free = tenant.max_in_flight - tenant.active_jobs
    if free < count:
        raise TooManyJobs(
            f"too many requests in flight for the batch: its {count} requests need {count} "
            f"free places, {tenant.active_jobs} of {tenant.max_in_flight} are queued or "
            "running (free: "
            f"{max(free, 0)}); nothing was reserved",
            extra={
                "limit": tenant.max_in_flight,
                "required": count,
                "available": max(free, 0),
                "headers": {"Retry-After": "1"},
            },
        )
