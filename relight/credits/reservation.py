"""Reserving a new job's price: where a submit takes credits.

One statement (one round trip) takes the price and an in-flight slot from an active tenant that
can afford both (`service.RESERVE_BALANCE`), writes the `reserve` ledger entry and inserts the
job from the same row, so the three happen together or not at all: a refused tenant leaves no
job and no entry, and a job never exists without its reservation. The job's later settlement
(charge or refund) is `service.charge_credits` / `service.refund_credits`, called by
`relight.jobs.lifecycle`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import CTE, Row, bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningInsert

from relight import metrics
from relight.credits.service import RESERVE_BALANCE, entry_from, explain_refusal
from relight.ids import uuid7
from relight.models import CreditKind, Job, Tenant

_JOB_TABLE = Job.metadata.tables[Job.__tablename__]

# What a submit sets; every other column takes its default. `id` and `tenant_id` are the
# reservation's `job_id` and `tenant_id` parameters, so the job and its ledger entry agree.
_SUBMITTED_COLUMNS = [
    "created_at",
    "status",
    "params",
    "input_url",
    "input_storage_key",
    "background_url",
    "background_storage_key",
    "seed",
    "backend_requested",
    "credits_reserved",
    "idempotency_key",
    "request_hash",
    "webhook_url",
    "webhook_events",
    "http_request_id",
]


# The columns whose values the job brings; RETURNING reads back only the others.
_SENT = frozenset(["id", "tenant_id", *_SUBMITTED_COLUMNS])


def _job_from_reservation(moved: CTE) -> ReturningInsert[Any]:
    columns = _JOB_TABLE.c
    values = [
        bindparam("job_id", type_=columns.id.type),
        bindparam("tenant_id", type_=columns.tenant_id.type),
        *(bindparam(f"job_{name}", type_=columns[name].type) for name in _SUBMITTED_COLUMNS),
    ]
    return (
        insert(_JOB_TABLE)
        .from_select(
            ["id", "tenant_id", *_SUBMITTED_COLUMNS],
            select(*values).select_from(moved),
            # The other columns take their server defaults (the models' Python defaults agree).
            include_defaults=False,
        )
        # Only what the database fills in: the job already holds what was sent, so reading it
        # back (JSON columns included) was work for nothing on every submit.
        .returning(*(column for column in columns if column.name not in _SENT))
    )


def _reserving_insert() -> ReturningInsert[Any]:
    moved = RESERVE_BALANCE.returning(Tenant.credit_balance).cte("moved")
    # Postgres runs a data-modifying CTE whether or not the main statement reads it.
    return _job_from_reservation(moved).add_cte(entry_from(moved).cte("entry"))


_RESERVE_AND_INSERT_JOB = _reserving_insert()


async def reserve_credits(session: AsyncSession, job: Job, cost: int) -> Job:
    """Reserve `cost` and an in-flight slot for the new `job` and insert it, in one statement.

    Raises 403 (suspended), 406 (not enough credits) or 429 (too many jobs in flight) when the
    tenant is refused, IntegrityError when the idempotency key is taken. `job` comes back with
    the columns the database filled in; it is not in the session.
    """
    parameters = {
        **{f"job_{name}": job.__dict__[name] for name in _SUBMITTED_COLUMNS},
        "entry_id": uuid7(),
        "tenant_id": job.tenant_id,
        "job_id": job.id,
        "kind": CreditKind.RESERVE.value,
        "change": -cost,
        "reason": None,
    }
    connection = await session.connection()
    row: Row[Any] | None = (
        await connection.execute(_RESERVE_AND_INSERT_JOB, parameters)
    ).one_or_none()
    if row is None:
        await explain_refusal(session, job.tenant_id, cost)
    metrics.count_credits(session, "reserved", cost)
    # What the database filled in (defaults, timestamps); the rest is what was sent.
    for key, value in row._mapping.items():
        if key not in job.__dict__:
            setattr(job, key, value)
    return job
