"""Waiting for a job to finish: woken by the job-finished notification, confirmed in Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from api.state import AppState
from relight.jobs import queries
from relight.models import Job, JobStatus

# What a lost notification can cost a waiter at most: it re-reads the row this often anyway.
RECHECK_S = 5.0


async def _load(state: AppState, job_id: uuid.UUID) -> Job:
    async with state.sessionmaker() as session:
        job = await queries.find_any_request(session, job_id)
    assert job is not None, "a job the caller just committed cannot vanish"
    return job


async def wait_for_job(state: AppState, job_id: uuid.UUID, timeout_s: float) -> Job:
    """The job once it is terminal, or as it stands when `timeout_s` runs out."""
    deadline = time.monotonic() + timeout_s
    async with state.waiter.watch(job_id) as finished:
        while True:
            job = await _load(state, job_id)
            remaining = deadline - time.monotonic()
            if JobStatus(job.status).is_terminal or remaining <= 0:
                return job
            finished.clear()
            # The re-check above closes the race; the cap bounds the cost of a lost message.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), timeout=min(remaining, RECHECK_S))
