"""Issue 19, must show 3: every number on the overview matches a SQL query over known jobs.

The jobs below have hand-picked times around `now`, far from any window's edge, so the
numbers are known in advance (asserted as such) and each is also checked against its own
query, written here independently of `relight.ops.overview`. The page test then reads every
number the page marks (`data-metric`) and compares each with the same queries.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.core.models import Job
from relight.ops.overview import load_overview
from relight.tenants.service import create_tenant
from tests.ui.conftest import sign_in

MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class Spec:
    status: str
    created: timedelta  # before now
    wait: timedelta | None = None  # created → started
    run: timedelta | None = None  # started → finished (or created → finished if never started)
    error: str | None = None


JOBS = [
    Spec("succeeded", 10 * MINUTE, 2 * SECOND, 3 * SECOND),
    Spec("succeeded", 20 * MINUTE, 4 * SECOND, 7 * SECOND),
    Spec("succeeded", 40 * MINUTE, 6 * SECOND, 11 * SECOND),
    Spec("failed", 30 * MINUTE, 1 * SECOND, 1 * SECOND, "backend_failed"),
    Spec("failed", 3 * 60 * MINUTE, 1 * SECOND, SECOND / 2, "invalid_input"),
    Spec("failed", 5 * 60 * MINUTE, 10 * SECOND, 2 * SECOND, "backend_failed"),
    Spec("succeeded", 2 * 60 * MINUTE, 20 * SECOND, 30 * SECOND),
    Spec("canceled", 50 * MINUTE, None, MINUTE),
    Spec("queued", 1 * MINUTE),
    Spec("running", 3 * MINUTE, 60 * SECOND),
    Spec("succeeded", 30 * 60 * MINUTE, 5 * SECOND, 3 * SECOND),  # outside the day
    Spec("queued", 26 * 60 * MINUTE),  # stuck: queued now, outside both windows
]


async def insert_jobs(sessionmaker: async_sessionmaker[AsyncSession], now: datetime) -> None:
    async with sessionmaker() as session, session.begin():
        tenants = [(await create_tenant(session, name)).id for name in ("ops-alpha", "ops-beta")]
        for number, spec in enumerate(JOBS):
            created = now - spec.created
            started = created + spec.wait if spec.wait is not None else None
            finished = None
            if spec.run is not None:
                finished = (started or created) + spec.run
            session.add(
                Job(
                    id=uuid.uuid4(),
                    tenant_id=tenants[number % 2],
                    status=spec.status,
                    params={},
                    seed=number,
                    backend_requested="local",
                    backend_used="local" if started else None,
                    attempts=1 if started else 0,
                    error_code=spec.error,
                    created_at=created,
                    started_at=started,
                    finished_at=finished,
                )
            )


# The independent queries: one per kind of number, windows as [since, now).
STATUS_SQL = """
    select status, count(*) from job
    where created_at >= :since and created_at < :now group by status
"""
FINISHED_SQL = """
    select count(*) from job
    where status = :status and finished_at >= :since and finished_at < :now
"""
WAIT_SQL = """
    select percentile_cont(:q) within group (order by extract(epoch from started_at - created_at))
    from job where started_at >= :since and started_at < :now
"""
RUN_SQL = """
    select percentile_cont(:q) within group (order by extract(epoch from finished_at - started_at))
    from job where status = 'succeeded' and started_at is not null
    and finished_at >= :since and finished_at < :now
"""
ERRORS_SQL = """
    select coalesce(error_code, 'unknown'), count(*) from job
    where status = 'failed' and finished_at >= :since and finished_at < :now
    group by 1 order by 2 desc, 1
"""
NOW_SQL = "select count(*) from job where status = :status"
HOURLY_SQL = """
    select floor(extract(epoch from finished_at - cast(:since as timestamptz)) / 3600) as hour,
           count(*) filter (where status = 'succeeded'), count(*) filter (where status = 'failed')
    from job where finished_at >= :since and finished_at < :now
    group by 1
"""
LENGTHS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


async def numbers_by_sql(
    session: AsyncSession, now: datetime, redis: Redis, queue: str
) -> dict[str, Any]:
    """Every overview number, keyed as the page's `data-metric` attributes name them."""
    numbers: dict[str, Any] = {}
    for status in ("queued", "running"):
        numbers[status] = (await session.execute(text(NOW_SQL), {"status": status})).scalar_one()
    numbers["queue_entries"] = await redis.zcard(queue)
    for window, length in LENGTHS.items():
        args = {"since": now - length, "now": now}
        counts: dict[str, int] = dict((await session.execute(text(STATUS_SQL), args)).all())
        for status in ("queued", "running", "succeeded", "failed", "canceled"):
            numbers[f"{window}.submitted.{status}"] = counts.get(status, 0)
        for status in ("succeeded", "failed"):
            numbers[f"{window}.{status}"] = (
                await session.execute(text(FINISHED_SQL), {**args, "status": status})
            ).scalar_one()
        minutes = {"hour": 60, "day": 1440}[window]
        numbers[f"{window}.throughput_per_minute"] = numbers[f"{window}.succeeded"] / minutes
        for name, sql in (("queue_wait", WAIT_SQL), ("run_time", RUN_SQL)):
            for label, q in (("p50", 0.5), ("p95", 0.95)):
                value = (await session.execute(text(sql), {**args, "q": q})).scalar_one()
                numbers[f"{window}.{name}.{label}"] = value
    for code, count in (
        await session.execute(text(ERRORS_SQL), {"since": now - LENGTHS["day"], "now": now})
    ).all():
        numbers[f"errors.{code}"] = count
    return numbers


def overview_as_numbers(overview: Any) -> dict[str, Any]:
    numbers: dict[str, Any] = {
        "queued": overview.queued,
        "running": overview.running,
        "queue_entries": overview.queue_entries,
    }
    for window in overview.windows:
        for status, count in window.submitted.items():
            numbers[f"{window.name}.submitted.{status}"] = count
        numbers[f"{window.name}.succeeded"] = window.succeeded
        numbers[f"{window.name}.failed"] = window.failed
        numbers[f"{window.name}.throughput_per_minute"] = window.throughput_per_minute
        for name in ("queue_wait", "run_time"):
            for label in ("p50", "p95"):
                numbers[f"{window.name}.{name}.{label}"] = getattr(getattr(window, name), label)
    for code, count in overview.errors:
        numbers[f"errors.{code}"] = count
    return numbers


def assert_same(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if value is None or actual[key] is None:
            assert actual[key] == value, key
        else:
            assert float(actual[key]) == pytest.approx(float(value), abs=1e-6), key


async def test_every_overview_number_is_its_sql_over_known_jobs(
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
    settings: Settings,
    clean_state: None,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    await insert_jobs(sessionmaker, now)
    await redis.zadd(settings.queue_name, {"some-job": 1, "another-job": 2})
    async with sessionmaker() as session:
        overview = await load_overview(session, now, await redis.zcard(settings.queue_name))
        expected = await numbers_by_sql(session, now, redis, settings.queue_name)
        hourly = {
            int(hour): (ok, bad)
            for hour, ok, bad in (
                await session.execute(
                    text(HOURLY_SQL), {"since": now - timedelta(hours=24), "now": now}
                )
            ).all()
        }
    numbers = overview_as_numbers(overview)
    assert_same(numbers, expected)
    # The same numbers, known in advance from the jobs above.
    assert (numbers["queued"], numbers["running"], numbers["queue_entries"]) == (2, 1, 2)
    assert [numbers[f"hour.submitted.{s}"] for s in ("succeeded", "failed", "canceled")] == [
        3,
        1,
        1,
    ]
    assert [numbers[f"day.submitted.{s}"] for s in ("succeeded", "failed", "queued")] == [4, 3, 1]
    assert (numbers["hour.succeeded"], numbers["day.failed"]) == (3, 3)
    assert numbers["hour.throughput_per_minute"] == pytest.approx(3 / 60)
    # Waits of the hour: 1, 2, 4, 6, 60 s; run times: 3, 7, 11 s (linear interpolation).
    assert numbers["hour.queue_wait.p50"] == pytest.approx(4.0)
    assert numbers["hour.queue_wait.p95"] == pytest.approx(6 + 0.8 * 54)
    assert numbers["hour.run_time.p50"] == pytest.approx(7.0)
    assert numbers["hour.run_time.p95"] == pytest.approx(10.6)
    assert overview.errors == [("backend_failed", 2), ("invalid_input", 1)]
    # The chart's bars: one per hour, oldest first, each the query's count for that hour.
    assert len(overview.hourly) == 24
    for index, (start, ok, bad) in enumerate(overview.hourly):
        assert start == now - timedelta(hours=24 - index)
        assert (ok, bad) == hourly.get(index, (0, 0)), index
    assert sum(ok for _, ok, _ in overview.hourly) == 4


METRIC = re.compile(r'data-metric="([^"]+)"(?: data-value="([^"]*)")?>([^<]*)<')


async def test_the_page_shows_every_overview_number_as_its_sql(
    ui_client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
    settings: Settings,
) -> None:
    await insert_jobs(sessionmaker, datetime.now(UTC))
    await sign_in(ui_client)
    page = await ui_client.get("/admin/ui")
    assert page.status_code == 200
    shown: dict[str, Any] = {}
    for name, value, body in METRIC.findall(page.text):
        # Durations carry their exact value beside the rounded text; "None": no job.
        raw = value if value else body.strip()
        shown[name] = None if raw in ("None", "—") else float(raw)
    async with sessionmaker() as session:
        expected = await numbers_by_sql(session, datetime.now(UTC), redis, settings.queue_name)
    # Throughput is shown to two decimals.
    for key in ("hour.throughput_per_minute", "day.throughput_per_minute"):
        assert shown[key] == pytest.approx(expected[key], abs=0.005)
        shown[key] = expected[key]
    assert_same(shown, expected)
