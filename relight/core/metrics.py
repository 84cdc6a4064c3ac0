"""Prometheus metrics: defined once here, recorded where things happen, served by the api
(`GET /metrics`) and by each worker (its own port).

Everything lives in prometheus_client's default registry, which also carries the process
collectors (CPU, memory, open files). Label values come from small fixed sets (route
templates, statuses, backend names), never from user input, so the series stay few.

What changes the database is counted only once its transaction committed (`on_commit`, an
after-commit callback of `relight.core.unit_of_work`): a rolled-back charge, a savepoint
that lost an idempotency race or a retried job is never counted, and a committed one is
counted exactly once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from relight.core.unit_of_work import after_commit

__all__ = ["CONTENT_TYPE_LATEST", "render"]

logger = logging.getLogger(__name__)

HTTP_REQUESTS = Counter(
    "relight_http_requests_total",
    "HTTP requests answered by the api, by route template and status code",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "relight_http_request_duration_seconds",
    "Time from receiving an HTTP request to the end of its answer",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
JOBS_SUBMITTED = Counter(
    "relight_jobs_submitted_total",
    "Requests accepted (and paid for), by the backend they asked for",
    ["backend"],
)
JOBS = Counter(
    "relight_jobs_total",
    "Requests that ended, by final status and the backend that ran them (`none`: never ran)",
    ["backend", "status"],
)
JOB_RETRIES = Counter(
    "relight_job_retries_total",
    "Attempts that failed and went back to the queue, by backend",
    ["backend"],
)
QUEUE_DEPTH = Gauge(
    "relight_queue_depth",
    "Every entry in the arq queue (relight jobs, webhook deliveries and their deferred retries, "
    "the sweep cron), read from Redis when scraped; kept for compatibility, scale on "
    "relight_runnable_jobs",
)
RUNNABLE_JOBS = Gauge(
    "relight_runnable_jobs",
    "Relight jobs waiting to start or running (run_job entries of the arq queue that are due), "
    "by priority lane (high, normal, low), read from Redis when scraped; the signal workers "
    "scale on (the KEDA trigger leaves the low lane out)",
    ["lane"],
)
LANES = ("high", "normal", "low")
WEBHOOK_DELIVERIES_PENDING = Gauge(
    "relight_webhook_deliveries_pending",
    "Webhook delivery attempts in the arq queue, due or deferred (retries waiting their turn), "
    "read from Redis when scraped",
)
QUEUE_WAIT = Histogram(
    "relight_queue_wait_seconds",
    "Time from submit to the start of a request's first attempt",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800),
)
BACKEND_DURATION = Histogram(
    "relight_backend_duration_seconds",
    "Time a backend took to render one attempt, by backend and outcome",
    ["backend", "outcome"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
WEBHOOK_ATTEMPTS = Counter(
    "relight_webhook_attempts_total",
    "Webhook delivery attempts by outcome: delivered (2xx), gone (410), rejected (any other "
    "status), unreachable (timeout, connection error, refused address)",
    ["outcome"],
)
NODE_SLOTS_IN_USE = Gauge(
    "relight_node_slots_in_use",
    "GPU node slots held right now across every worker, by node id, read from Redis when scraped",
    ["node"],
)
CREDITS = Counter(
    "relight_credits_total",
    "Credits moved, by movement: reserved at submit, charged on success, refunded on "
    "failure or cancel, granted by operators",
    ["movement"],
)


def render() -> bytes:
    """The text exposition of every metric of this process."""
    return _generate_latest(REGISTRY)


@dataclass(frozen=True)
class QueueCounts:
    """What the arq queue holds, as the scaling gauges need it: every entry, the relight jobs
    waiting to start or running, and the webhook delivery attempts (due or deferred)."""

    entries: int
    runnable_jobs: int
    webhook_deliveries: int
    # runnable_jobs by priority lane (high, normal, low); empty: all counted as normal.
    runnable_by_lane: dict[str, int] = field(default_factory=dict)


async def refresh_from_redis(
    read_queue: Callable[[], Awaitable[QueueCounts]],
    read_node_slots: Callable[[], Awaitable[dict[str, int]]],
    timeout_s: float = 1.0,
) -> None:
    """Set the gauges that describe shared state (queue depth, runnable jobs, pending webhook
    deliveries, GPU node slots) from Redis. `read_queue` counts the arq queue (the jobs own its
    layout: `relight.jobs.queue_counts.count_queue`), `read_node_slots` the slots held on each
    node (the nodes own theirs: `relight.nodes.slots.slots_in_use`), both within `timeout_s`.
    When Redis does not answer in time the queue gauges say NaN: a scrape must not hang on it,
    nor report a stale depth."""
    try:
        async with asyncio.timeout(timeout_s):
            counts = await read_queue()
            slots = await read_node_slots()
    except (RedisError, OSError, TimeoutError):
        logger.warning("queue depth unavailable: Redis did not answer", exc_info=True)
        for gauge in (QUEUE_DEPTH, WEBHOOK_DELIVERIES_PENDING):
            gauge.set(math.nan)
        for lane in LANES:
            RUNNABLE_JOBS.labels(lane=lane).set(math.nan)
        return
    QUEUE_DEPTH.set(counts.entries)
    by_lane = counts.runnable_by_lane or {"normal": counts.runnable_jobs}
    for lane in LANES:
        RUNNABLE_JOBS.labels(lane=lane).set(by_lane.get(lane, 0))
    WEBHOOK_DELIVERIES_PENDING.set(counts.webhook_deliveries)
    NODE_SLOTS_IN_USE.clear()
    for node_id, used in slots.items():
        NODE_SLOTS_IN_USE.labels(node=node_id).set(used)


# --- recording once a transaction commits -------------------------------------------------


def on_commit(session: AsyncSession | Session, record: Callable[[], None]) -> None:
    """Call `record` when the session's transaction commits; forget it if the transaction (or
    the savepoint it was made in) rolls back, or if the session closes without committing
    (`relight.core.unit_of_work.after_commit`, the one after-commit mechanism)."""
    after_commit(session, record)


# --- recording helpers ----------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _series(metric: Counter | Histogram, *values: str) -> Any:
    """`metric.labels(*values)`, the values in the order of its label names. prometheus_client
    checks and converts the values on each call (about 7 µs, four times a submit); the label
    sets are few (see the module docstring), so each series is looked up once. Not for a
    metric whose series are ever removed (NODE_SLOTS_IN_USE)."""
    return metric.labels(*values)


def count_http_answer(method: str, route: str, status: str, seconds: float) -> None:
    """Count an answer of the api and its duration."""
    _series(HTTP_REQUESTS, method, route, status).inc()
    _series(HTTP_DURATION, method, route).observe(seconds)


def count_credits(session: AsyncSession | Session, movement: str, amount: int) -> None:
    """Count `amount` credits under `movement` once the caller's transaction commits."""
    if amount > 0:
        counter = _series(CREDITS, movement)
        on_commit(session, lambda: counter.inc(amount))


def job_backend(backend_used: str | None, backend_calls: list[dict[str, Any]]) -> str:
    """The backend label of a finished job: the one that ran it, else the last one tried."""
    if backend_used:
        return backend_used
    for entry in reversed(backend_calls):
        if entry.get("backend"):
            return str(entry["backend"])
    return "none"


def count_job_submitted(session: AsyncSession | Session, backend: str) -> None:
    """Count an accepted request (not an idempotent replay) once its submit commits."""
    on_commit(session, _series(JOBS_SUBMITTED, backend).inc)


def count_job_finished(session: AsyncSession | Session, status: str, backend: str) -> None:
    """Count a job that reached a final status, once the transition commits."""
    on_commit(session, JOBS.labels(backend=backend, status=status).inc)
