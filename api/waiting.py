"""Waiting for a job to finish: woken by the job-finished notification, confirmed in Postgres;
and noticing a synchronous caller that hangs up while it waits."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from starlette.types import Receive

from api.state import AppState
from relight.core.models import Job, JobStatus
from relight.jobs import queries

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


async def _hung_up(receive: Receive) -> None:
    """Returns once the client has disconnected. Only for a request whose body was read in
    full: what the server hands over after that is the disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def wait_unless_hung_up(
    state: AppState, job_id: uuid.UUID, timeout_s: float, receive: Receive
) -> Job | None:
    """`wait_for_job`, or None as soon as the client hangs up (before the job is finished)."""
    waiting = asyncio.ensure_future(wait_for_job(state, job_id, timeout_s))
    hang_up = asyncio.ensure_future(_hung_up(receive))
    try:
        await asyncio.wait({waiting, hang_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hang_up.cancel()
        if not waiting.done():
            waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hang_up
    if waiting.done() and not waiting.cancelled():
        # Finished and hung up at once: the job's answer wins (it may still be sent).
        return waiting.result()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    return None
