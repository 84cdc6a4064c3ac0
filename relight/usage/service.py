"""A tenant's usage over a window of time, by UTC day, backend or API key.

Credits are read from the ledger (so its figures are the ledger's to the credit: what a tenant
sees here is what its balance moved by), and counted in the period their entry was written;
requests, images and GPU time are counted in the period their request was accepted. So a
request accepted just before midnight and refunded just after counts its request on one day
and its refund on the next.
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from relight.core.errors import InvalidParameter
from relight.usage import repository
from relight.usage.repository import JobSums, LedgerSums
from relight.usage.schemas import GroupBy, UsageFigures, UsagePeriod, UsageReport

DEFAULT_WINDOW_DAYS = 30
MAX_WINDOW_DAYS = 366
CSV_COLUMNS = ("period", *UsageFigures.model_fields)


def _invalid(name: str, message: str) -> InvalidParameter:
    """A 422 naming the parameter, shaped as the api's other validation errors."""
    return InvalidParameter(
        f"{name}: {message}",
        extra={
            "field": name,
            "details": [{"field": name, "message": message, "type": "value_error"}],
        },
    )


def _instant(name: str, value: str, *, end: bool) -> datetime:
    """An ISO date or datetime as a UTC instant. A date is its first instant, or, for the
    window's end (exclusive), the first instant of the next day, so `to=2026-12-07` includes
    the 7th. A datetime without an offset is UTC."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime.combine(day + timedelta(days=1 if end else 0), time(), UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _invalid(
            name,
            f"{value!r} is not an ISO date (2026-12-07) or datetime (2026-12-07T12:00:00Z)",
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def usage_window(
    start: str | None, end: str | None, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """The window `[from, to)` of a usage query: by default the last 30 UTC days, today
    included, up to now; 422 naming the parameter when a bound is unreadable, `from` is not
    before `to`, or the window is longer than `MAX_WINDOW_DAYS`."""
    now = now or datetime.now(UTC)
    window_end = _instant("to", end, end=True) if end else now
    if start:
        window_start = _instant("from", start, end=False)
    else:
        today = datetime.combine(window_end.date(), time(), UTC)
        window_start = today - timedelta(days=DEFAULT_WINDOW_DAYS - 1)
    if window_start >= window_end:
        raise _invalid(
            "from",
            f"must be before to ({window_start.isoformat()} is not before "
            f"{window_end.isoformat()})",
        )
    if window_end - window_start > timedelta(days=MAX_WINDOW_DAYS):
        raise _invalid(
            "from", f"the window is at most {MAX_WINDOW_DAYS} days; ask for longer ones in parts"
        )
    return window_start, window_end


def _figures(ledger: LedgerSums | None, jobs: JobSums | None) -> UsageFigures:
    charged = ledger.charged if ledger else 0
    refunded = ledger.refunded if ledger else 0
    return UsageFigures(
        requests=jobs.requests if jobs else 0,
        completed=jobs.completed if jobs else 0,
        failed=jobs.failed if jobs else 0,
        canceled=jobs.canceled if jobs else 0,
        images=jobs.images if jobs else 0,
        credits_charged=charged,
        credits_refunded=refunded,
        credits_net=charged - refunded,
        gpu_seconds=round(jobs.gpu_ms / 1000, 3) if jobs else 0.0,
    )


async def usage_report(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    start: datetime,
    end: datetime,
    group_by: GroupBy,
) -> UsageReport:
    """The tenant's usage in `[start, end)`, one entry per period with any activity, and the
    totals; the credit figures equal the ledger's entries in the window exactly."""
    ledger = await repository.ledger_by_period(session, tenant_id, start, end, group_by)
    jobs = await repository.jobs_by_period(session, tenant_id, start, end, group_by)
    periods = sorted(ledger.keys() | jobs.keys())
    data = [
        UsagePeriod(period=period, **_figures(ledger.get(period), jobs.get(period)).model_dump())
        for period in periods
    ]
    totals = _figures(
        LedgerSums(
            charged=sum(sums.charged for sums in ledger.values()),
            refunded=sum(sums.refunded for sums in ledger.values()),
        ),
        JobSums(
            requests=sum(sums.requests for sums in jobs.values()),
            completed=sum(sums.completed for sums in jobs.values()),
            failed=sum(sums.failed for sums in jobs.values()),
            canceled=sum(sums.canceled for sums in jobs.values()),
            images=sum(sums.images for sums in jobs.values()),
            gpu_ms=sum(sums.gpu_ms for sums in jobs.values()),
        ),
    )
    return UsageReport(data=data, start=start, end=end, group_by=group_by, totals=totals)


def usage_csv(report: UsageReport) -> str:
    """The report's periods as CSV, a header row first (the totals are the columns' sums)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.data:
        values = row.model_dump()
        writer.writerow([values[column] for column in CSV_COLUMNS])
    return out.getvalue()
