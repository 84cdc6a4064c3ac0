"""Which backend runs a job, and what to do when one fails: retry it, fail over, or give up.

Pure decisions, made from the job's attempt log (`relight.backends.attempts`) alone, so they
survive retries on other workers: each backend gets `max_tries` tries, fewer if it fails for
good; a transient failure is retried on the same backend after a backoff, a failure that allows
failover moves on to the next candidate at once, and a job with no candidate left fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from relight.backends.attempts import Attempt
from relight.core.backoff import retry_delay_s
from relight.core.errors import BackendFailed, RelightError
from relight.core.params import Backend

# Transient failures of these backends end as `upstream_unavailable` once every try is spent.
REMOTE_BACKENDS = frozenset({Backend.GPU, Backend.SEGMIND})
# An upstream's Retry-After is honoured up to this long; a job is not parked for longer.
MAX_RETRY_AFTER_S = 600.0


def candidates(
    requested: Backend,
    allowed: Iterable[str],
    order: Iterable[str],
    available: Iterable[Backend],
) -> list[Backend]:
    """The backends a job may run on, in the order to try them: the one it named, or under
    `auto` the `available` ones the tenant is `allowed`, in the configured failover `order`."""
    usable = set(allowed) & set(available)
    if requested is not Backend.AUTO:
        return [requested] if requested in usable else []
    return [Backend(name) for name in order if name in usable]


def tries_on(backend: Backend, log: Sequence[Attempt]) -> int:
    return sum(1 for attempt in log if attempt.backend == backend)


def is_exhausted(backend: Backend, log: Sequence[Attempt], max_tries: int) -> bool:
    """Whether `backend` has had its tries: `max_tries` of them, or one that failed for good."""
    tried = [attempt for attempt in log if attempt.backend == backend]
    return any(attempt.failed_for_good for attempt in tried) or len(tried) >= max_tries


def choose(choices: Sequence[Backend], log: Sequence[Attempt], max_tries: int) -> Backend | None:
    """The first candidate that is not exhausted, or None when none is left."""
    for name in choices:
        if not is_exhausted(name, log, max_tries):
            return name
    return None


def final_code(backend: Backend, error: BackendFailed) -> str:
    """The error code a job ends with when its last backend failed with `error`."""
    if error.retryable and backend in REMOTE_BACKENDS:
        return "upstream_unavailable"
    return error.code


@dataclass(frozen=True)
class NextStep:
    """What follows a failed attempt: queue the job again after `delay_s` (`retry`), or end it
    failed; either way the job carries the error `code`."""

    retry: bool
    delay_s: float
    code: str


def after_failure(
    error: RelightError,
    *,
    attempts: int,
    failed: Attempt | None,
    choices: Sequence[Backend],
    log: Sequence[Attempt],
    max_tries: int,
    backoff_s: float,
) -> NextStep:
    """Decide what follows attempt number `attempts`, which failed with `error`.

    `failed` is its entry in the attempt log (`log`, which ends with it) when it ran on a
    backend, None when it failed before (loading the subject, no backend to run on): then it is
    retried while the error is retryable and the job has tries left. Otherwise the next
    candidate decides: the same backend again after a backoff (at least its Retry-After), another
    one at once, or none, and the job fails.
    """
    if failed is None or not isinstance(error, BackendFailed):
        retry = error.retryable and attempts < max_tries
        delay = retry_delay_s(backoff_s, attempts, max_retry_after_s=MAX_RETRY_AFTER_S)
        return NextStep(retry=retry, delay_s=delay, code=error.code)
    following = None
    if error.retryable or error.failover:
        following = choose(choices, log, max_tries)
    if following is None:
        return NextStep(retry=False, delay_s=0.0, code=final_code(failed.backend, error))
    if following != failed.backend:
        return NextStep(retry=True, delay_s=0.0, code=error.code)  # fail over at once
    delay = retry_delay_s(
        backoff_s,
        tries_on(failed.backend, log),
        retry_after_s=error.retry_after_s,
        max_retry_after_s=MAX_RETRY_AFTER_S,
    )
    return NextStep(retry=True, delay_s=delay, code=error.code)
