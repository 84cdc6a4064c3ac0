"""The overview's numbers, each from one SQL query over the job table (and the queue's size).

Every number the operators' overview shows comes from `load_overview`, so a test can set up a
known set of jobs and compare each number with its own query. Windows end at `now` (a
parameter, not the database clock, so a test can pin it) and count a job by the moment that
matters for the number: submissions by `created_at`, queue waits by `started_at`, completions
and run times by `finished_at`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from relight.core.models import JobStatus
from relight.ops import repository
from relight.ops.repository import Spread, count_by_status, finished_count

WINDOWS: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
TOP_ERRORS = 10
CHART_HOURS = 24


@dataclass(frozen=True)
class Percentiles:
    """Seconds; None when no job fell in the window."""

    count: int
    p50: float | None
    p95: float | None


@dataclass(frozen=True)
class WindowStats:
    """One window (the last hour, the last day) ending at `now`."""

    name: str
    submitted: dict[str, int]  # jobs created in the window, by status (every status present)
    succeeded: int  # jobs that finished successfully in the window
    failed: int  # jobs that ended failed in the window
    throughput_per_minute: float  # succeeded / minutes in the window
    queue_wait: Percentiles  # started_at - created_at, jobs started in the window
    run_time: Percentiles  # finished_at - started_at, jobs succeeded in the window


@dataclass(frozen=True)
class Overview:
    now: datetime
    queued: int  # jobs waiting now (Postgres, the source of truth)
    running: int  # jobs running now
    queue_entries: int | None  # entries in the arq queue (Redis); None if unread
    windows: list[WindowStats]
    errors: list[tuple[str, int]]  # failed jobs of the last day by error code, most first
    # Completed and failed jobs per hour over the last CHART_HOURS, oldest hour first.
    hourly: list[tuple[datetime, int, int]] = field(default_factory=list)


def _percentiles(spread: Spread) -> Percentiles:
    count, p50, p95 = spread
    return Percentiles(count=count, p50=p50, p95=p95)


async def window_stats(
    session: AsyncSession, name: str, length: timedelta, now: datetime
) -> WindowStats:
    since = now - length
    succeeded = await finished_count(session, JobStatus.SUCCEEDED, since, now)
    return WindowStats(
        name=name,
        submitted=await count_by_status(session, since, now),
        succeeded=succeeded,
        failed=await finished_count(session, JobStatus.FAILED, since, now),
        throughput_per_minute=succeeded / (length.total_seconds() / 60),
        queue_wait=_percentiles(await repository.queue_waits(session, since, now)),
        run_time=_percentiles(await repository.run_times(session, since, now)),
    )


async def ranked_errors(
    session: AsyncSession, since: datetime, now: datetime
) -> list[tuple[str, int]]:
    """Jobs failed in `[since, now)` by error code, most first (the TOP_ERRORS commonest)."""
    return await repository.error_counts(session, since, now, TOP_ERRORS)


async def hourly_outcomes(session: AsyncSession, now: datetime) -> list[tuple[datetime, int, int]]:
    """(hour start, succeeded, failed) for each of the last CHART_HOURS hours ending at `now`."""
    since = now - timedelta(hours=CHART_HOURS)
    rows = await repository.hourly_counts(session, since, now)
    succeeded = [0] * CHART_HOURS
    failed = [0] * CHART_HOURS
    for index, status, count in rows:
        (succeeded if status == JobStatus.SUCCEEDED.value else failed)[index] = count
    return [(since + timedelta(hours=n), succeeded[n], failed[n]) for n in range(CHART_HOURS)]


async def load_overview(
    session: AsyncSession, now: datetime, queue_entries: int | None
) -> Overview:
    """Every number of the overview, as of `now`."""
    current = await repository.live_counts(session)
    return Overview(
        now=now,
        queued=current.get(JobStatus.QUEUED.value, 0),
        running=current.get(JobStatus.RUNNING.value, 0),
        queue_entries=queue_entries,
        windows=[
            await window_stats(session, name, length, now) for name, length in WINDOWS.items()
        ],
        errors=await ranked_errors(session, now - WINDOWS["day"], now),
        hourly=await hourly_outcomes(session, now),
    )
