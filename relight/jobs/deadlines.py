"""Deadlines: `Cancel-After` (Replicate's header) read into a duration, and what a request that
outlived its deadline ends with.

A request with a deadline stores it (`job.deadline_at`): Postgres is the truth, so a Redis that
lost everything loses no deadline. Whoever finds the deadline passed moves the job through
`relight.jobs.lifecycle.expire_deadline` (queued or running → canceled, refunded once, webhook
sent): each worker's deadline watcher (`relight.jobs.deadline_watch`, beside its job slots, at
the deadline instant; a running job's runner then stops as a canceled job's does), the claim of
a job that waited past it (it never starts), and the sweeper, the fallback.
"""

from __future__ import annotations

import re
from datetime import timedelta

from relight.core.errors import InvalidParameter

CANCEL_AFTER_HEADER = "Cancel-After"
DEADLINE_EXCEEDED = "deadline_exceeded"
# Longer than any sensible wait in a queue, short enough to catch a typo of units.
MAX_CANCEL_AFTER = timedelta(days=1)
CANCEL_AFTER_DESCRIPTION = (
    "a duration such as `30s`, `5m`, `1h` or `1m30s` (units h, m, s, ms; at most 24h): a "
    "request not finished by then ends CANCELED with error_code `deadline_exceeded`, refunded"
)

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class InvalidCancelAfter(InvalidParameter):
    code = "invalid_cancel_after"


def parse_cancel_after(value: str) -> timedelta:
    """`30s`, `5m`, `1h`, `1m30s`, `1.5s`, `250ms` (Go's duration syntax, as Replicate takes
    it; a bare number counts as seconds) → the duration; 422 `invalid_cancel_after` naming the
    header for anything else, a duration of zero, or one over a day."""
    text = value.strip().lower()
    seconds = _seconds(text)
    if seconds is None:
        raise InvalidCancelAfter(
            f"{CANCEL_AFTER_HEADER} {value!r} is not a duration such as 30s, 5m, 1h or 1m30s",
            extra={"field": CANCEL_AFTER_HEADER},
        )
    # Compared as seconds first: a huge number would overflow a timedelta.
    if not 0 < seconds <= MAX_CANCEL_AFTER.total_seconds():
        raise InvalidCancelAfter(
            f"{CANCEL_AFTER_HEADER} {value!r} must be more than 0 and at most 24h",
            extra={"field": CANCEL_AFTER_HEADER},
        )
    return timedelta(seconds=seconds)


def _seconds(text: str) -> float | None:
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    position, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text):
        return None
    return total


def deadline_message() -> str:
    """The error message of a request canceled at its deadline."""
    return "the request did not finish before its deadline (Cancel-After) and was canceled"
