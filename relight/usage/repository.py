"""Every query of usage: the ledger's job entries and the job rows of a window, grouped.

Two reads, each one statement grouped in Postgres: the credits come from the ledger (the
`reserve`, `charge` and `refund` entries written in the window), so their sums are the
ledger's exactly; the counts and GPU time come from the jobs accepted in the window. A period
is the UTC day, the backend that rendered the job, or the prefix of the key that submitted it.

Both tables are read through their `(tenant_id, id)` index: ids are UUIDv7, made when the row
is, so an id range (widened by `ID_MARGIN`, for a transaction whose `now()` began a while before
its ids were made) bounds the scan, and `created_at` then decides exactly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from relight.usage.schemas import GroupBy

ID_MARGIN = timedelta(hours=1)
# What a job without a backend (it never ran) or without a key (made before keys were
# recorded, or its key deleted) is grouped under.
NONE = "none"


# The period of a row, by grouping; the job (as `request`) and its `api_key` are joined for
# every grouping.
_PERIOD = {
    GroupBy.DAY: "to_char(({at} AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD')",
    GroupBy.BACKEND: f"coalesce(request.backend_used, '{NONE}')",
    GroupBy.KEY: f"coalesce(api_key.prefix, '{NONE}')",
}

_LEDGER = """
SELECT {period} AS period,
       coalesce(sum(CASE WHEN entry.kind IN ('reserve', 'charge') THEN -entry.amount END), 0)
           AS charged,
       coalesce(sum(CASE WHEN entry.kind = 'refund' THEN entry.amount END), 0) AS refunded
FROM credit_entry AS entry
LEFT JOIN job AS request ON request.id = entry.job_id
LEFT JOIN api_key ON api_key.id = request.api_key_id
WHERE entry.tenant_id = :tenant_id
  AND entry.id >= :low_id AND entry.id < :high_id
  AND entry.created_at >= :start AND entry.created_at < :end
  AND entry.kind IN ('reserve', 'charge', 'refund')
GROUP BY 1
"""

# A job's GPU time: the latency of every call its attempts made to a GPU node, failed ones too.
_JOBS = """
SELECT {period} AS period,
       count(*) AS requests,
       count(*) FILTER (WHERE request.status = 'succeeded') AS completed,
       count(*) FILTER (WHERE request.status = 'failed') AS failed,
       count(*) FILTER (WHERE request.status = 'canceled') AS canceled,
       coalesce(sum(outputs.images), 0) AS images,
       coalesce(sum(gpu.ms), 0) AS gpu_ms
FROM job AS request
LEFT JOIN api_key ON api_key.id = request.api_key_id
CROSS JOIN LATERAL (
    SELECT count(*) AS images FROM job_output WHERE job_output.job_id = request.id
) AS outputs
CROSS JOIN LATERAL (
    SELECT sum((call ->> 'latency_ms')::float8) AS ms
    FROM jsonb_array_elements(request.backend_calls) AS attempt,
         jsonb_array_elements(coalesce(attempt -> 'calls', '[]'::jsonb)) AS call
    WHERE call ->> 'backend' = 'gpu'
) AS gpu
WHERE request.tenant_id = :tenant_id
  AND request.id >= :low_id AND request.id < :high_id
  AND request.created_at >= :start AND request.created_at < :end
GROUP BY 1
"""


@dataclass(frozen=True)
class LedgerSums:
    charged: int
    refunded: int


@dataclass(frozen=True)
class JobSums:
    requests: int
    completed: int
    failed: int
    canceled: int
    images: int
    gpu_ms: float


def _lowest_id_at(at: datetime) -> uuid.UUID:
    """No UUIDv7 made at `at` or later sorts below this one."""
    millis = min(max(int(at.timestamp() * 1000), 0), (1 << 48) - 1)
    return uuid.UUID(int=millis << 80)


def _bounds(tenant_id: uuid.UUID, start: datetime, end: datetime) -> dict[str, object]:
    return {
        "tenant_id": tenant_id,
        "start": start,
        "end": end,
        "low_id": _lowest_id_at(start - ID_MARGIN),
        "high_id": _lowest_id_at(end + ID_MARGIN),
    }


async def ledger_by_period(
    session: AsyncSession, tenant_id: uuid.UUID, start: datetime, end: datetime, by: GroupBy
) -> dict[str, LedgerSums]:
    """Credits taken (reserve and charge entries, negated) and refunded, by period."""
    statement = text(_LEDGER.format(period=_PERIOD[by].format(at="entry.created_at")))
    rows = await session.execute(statement, _bounds(tenant_id, start, end))
    return {row.period: LedgerSums(int(row.charged), int(row.refunded)) for row in rows}


async def jobs_by_period(
    session: AsyncSession, tenant_id: uuid.UUID, start: datetime, end: datetime, by: GroupBy
) -> dict[str, JobSums]:
    """The jobs accepted in the window, counted, with their images and GPU time, by period."""
    statement = text(_JOBS.format(period=_PERIOD[by].format(at="request.created_at")))
    rows = await session.execute(statement, _bounds(tenant_id, start, end))
    return {
        row.period: JobSums(
            requests=int(row.requests),
            completed=int(row.completed),
            failed=int(row.failed),
            canceled=int(row.canceled),
            images=int(row.images),
            gpu_ms=float(row.gpu_ms),
        )
        for row in rows
    }
