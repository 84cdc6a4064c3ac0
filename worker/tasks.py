"""arq task functions. Thin: the work is `relight.jobs.execution.JobRunner`."""

from __future__ import annotations

import uuid
from typing import Any

from arq import Retry

from relight.jobs.execution import JobRunner


async def run_job(ctx: dict[str, Any], job_id: str) -> str:
    """Run one relight job; safe to call more than once for the same id."""
    runner: JobRunner = ctx["runner"]
    outcome = await runner.run(uuid.UUID(job_id))
    if outcome.retry_in_s is not None:
        raise Retry(defer=outcome.retry_in_s)
    return outcome.status.value if outcome.status is not None else "skipped"
