"""A worker with one slot whose `local` backend takes a set time per job, run in the background
for a test: how the deadline and lane tests make a busy worker and an order of starts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from bench.noop_worker import NoopBackend
from relight.backends.render_backend import RenderBackend
from relight.core.config import Settings
from relight.core.params import Backend
from worker.settings import build_worker


@contextlib.asynccontextmanager
async def one_slot_worker(
    settings: Settings, backend: RenderBackend | None = None, job_s: float = 0.05
) -> AsyncIterator[None]:
    """One worker, one job at a time, on `backend` (else jobs of `job_s` each), for the block.
    The sweep runs at start and then once a minute, out of the way of the order of starts."""
    one_slot = settings.model_copy(update={"worker_concurrency": 1, "webhook_sweep_interval_s": 60})
    worker = build_worker(
        one_slot, backends={Backend.LOCAL: backend or NoopBackend(job_s)}, handle_signals=False
    )
    task = asyncio.create_task(worker.async_run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
