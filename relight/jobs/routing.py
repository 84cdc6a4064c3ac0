"""Which backend runs a job, and what to do when one fails: retry it, fail over, or give up.

The job keeps a log of its attempts (`job.backend_calls`), one entry per attempt: the backend,
the outcome and the calls it made. Everything here is decided from that log, so the decision
survives retries on other workers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from relight.errors import BackendFailed

AUTO = "auto"
# Transient failures of these backends end as `upstream_unavailable` once every try is spent.
REMOTE_BACKENDS = frozenset({"gpu", "segmind"})
# The only backends that relight onto a background (IC-Light fbc on GPU nodes that have it);
# Segmind's ic-light has no such model and the classic CPU engine does not try.
BACKGROUND_BACKENDS = frozenset({"gpu"})


def candidates(
    requested: str,
    allowed: Iterable[str],
    order: Iterable[str],
    available: Iterable[str],
    *,
    backgrounds: bool = False,
) -> list[str]:
    """The backends a job may run on, in the order to try them (for a background request,
    only `BACKGROUND_BACKENDS`)."""
    usable = set(allowed) & set(available)
    if backgrounds:
        usable &= BACKGROUND_BACKENDS
    if requested != AUTO:
        return [requested] if requested in usable else []
    return [name for name in order if name in usable]


def attempt_entry(
    attempt: int, backend: str, error: BackendFailed | None, calls: list[dict[str, Any]]
) -> dict[str, Any]:
    entry: dict[str, Any] = {"attempt": attempt, "backend": backend, "calls": calls}
    if error is None:
        entry["outcome"] = "ok"
    else:
        entry |= {
            "outcome": "failed",
            "code": error.code,
            "retryable": error.retryable,
            "failover": error.failover,
        }
    return entry


def tries_on(backend: str, log: list[dict[str, Any]]) -> int:
    return sum(1 for entry in log if entry.get("backend") == backend)


def is_exhausted(backend: str, log: list[dict[str, Any]], max_tries: int) -> bool:
    entries = [entry for entry in log if entry.get("backend") == backend]
    if any(entry.get("outcome") == "failed" and not entry.get("retryable") for entry in entries):
        return True
    return len(entries) >= max_tries


def choose(choices: list[str], log: list[dict[str, Any]], max_tries: int) -> str | None:
    """The first candidate that is not exhausted, or None when none is left."""
    for name in choices:
        if not is_exhausted(name, log, max_tries):
            return name
    return None


def final_code(backend: str, error: BackendFailed) -> str:
    """The error code a job ends with when its last backend failed with `error`."""
    if error.retryable and backend in REMOTE_BACKENDS:
        return "upstream_unavailable"
    return error.code
