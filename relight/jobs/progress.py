"""A running job's `progress`, written to its row as the backend reports it.

Backends call the callback from any thread (the local engine runs on a pool) as often as they
like; a writer task stores the latest value at most every `interval_s`, only while the attempt
still holds the job (`lifecycle.record_progress`), and has `written` called once each write
commits (an after-commit callback: to announce it to status streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.core.models import Job
from relight.core.unit_of_work import unit_of_work
from relight.jobs import lifecycle
from relight.jobs.lifecycle import Moved

logger = logging.getLogger(__name__)

# Progress 1.0 is written with the result, in the job's final transaction.
MAX_REPORTED = 0.99


class ProgressReport:
    def __init__(self) -> None:
        self.latest = 0.0

    def __call__(self, fraction: float) -> None:
        # A plain attribute store is atomic under the GIL, so any thread may call this.
        self.latest = max(self.latest, min(max(fraction, 0.0), MAX_REPORTED))


@asynccontextmanager
async def track_progress(
    sessionmaker: async_sessionmaker[AsyncSession],
    job: Job,
    interval_s: float = 0.5,
    written: Callable[[Moved], Awaitable[None]] | None = None,
) -> AsyncIterator[Callable[[float], None]]:
    """A progress callback for the block's duration, persisted in the background."""
    report = ProgressReport()
    done = asyncio.Event()

    async def write() -> None:
        stored = 0.0
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), interval_s)
            value = report.latest
            if done.is_set():
                return
            if value - stored < 0.01:
                continue
            try:
                async with unit_of_work(sessionmaker) as uow:
                    moved = await lifecycle.record_progress(uow.session, job, value)
                    if moved is not None and written is not None:
                        uow.after_commit(partial(written, moved))
                stored = value
            except Exception:
                logger.warning("could not record the progress of job %s", job.id, exc_info=True)
                continue

    writer = asyncio.create_task(write())
    try:
        yield report
    finally:
        # Let a write in progress finish rather than cancel it inside its transaction.
        done.set()
        await asyncio.shield(writer)
