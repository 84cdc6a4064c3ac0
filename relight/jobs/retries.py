"""What becomes of a failed attempt: the same backend again after a backoff (honouring the
upstream's Retry-After), the next backend at once, or the end of the job with a final code.

The decision only; the status change it leads to is `relight.jobs.lifecycle`'s (`retry` or
`fail`), and the backend order is `relight.jobs.routing`'s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from relight.config import Settings
from relight.errors import BackendFailed, RelightError
from relight.jobs import routing
from relight.models import Job

MAX_RETRY_AFTER_S = 600.0


@dataclass(frozen=True)
class NextStep:
    """Back to the queue in `delay` s (`retry`), or failed with `code`; `log` is the attempt
    log to record either way."""

    retry: bool
    code: str
    delay: float
    log: list[dict[str, Any]]


def next_step(
    settings: Settings,
    job: Job,
    error: RelightError,
    entry: dict[str, Any] | None,
    choices: list[str] | None,
) -> NextStep:
    """Whether a failed attempt is tried again (and when), or what code it fails with."""
    code = error.code
    delay = settings.retry_backoff_s * 2 ** (job.attempts - 1) * random.uniform(0.9, 1.1)
    log = list(job.backend_calls)
    if entry is None or choices is None or not isinstance(error, BackendFailed):
        retry = error.retryable and job.attempts < settings.job_max_attempts
    else:
        log.append(entry)
        backend = entry["backend"]
        following = None
        if error.retryable or error.failover:
            following = routing.choose(choices, log, settings.job_max_attempts)
        retry = following is not None
        if following == backend:
            tries = routing.tries_on(backend, log)
            delay = settings.retry_backoff_s * 2 ** (tries - 1) * random.uniform(0.9, 1.1)
            # Honour the upstream's Retry-After, within reason.
            delay = max(delay, min(error.retry_after_s or 0.0, MAX_RETRY_AFTER_S))
        elif following is not None:
            delay = 0.0  # fail over at once
        else:
            code = routing.final_code(backend, error)
    return NextStep(retry=retry, code=code, delay=delay, log=log)
