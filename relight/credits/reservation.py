"""Reserving a new job's price: where a submit takes credits.

One statement (one round trip, `repository.reserve_and_insert_job`) takes the price and an
in-flight slot from an active tenant that can afford both, writes the `reserve` ledger entry and
inserts the job from the same row, so the three happen together or not at all: a refused tenant
leaves no job and no entry, and a job never exists without its reservation. The job's later
settlement (charge or refund) is `service.charge_credits` / `service.refund_credits`, called by
`relight.jobs.lifecycle`.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from relight import metrics
from relight.credits import repository
from relight.credits.service import explain_refusal
from relight.models import Job


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
