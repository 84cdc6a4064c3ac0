"""When to try again: one backoff with jitter, and the other side's `Retry-After`.

Jobs (per backend try) and webhook deliveries (per attempt) both wait `retry_delay_s` before
their next try; Segmind, GPU nodes and webhook receivers all say how long to wait in the same
header, read by `parse_retry_after`. The jitter spreads retries of work that failed together
(a Segmind outage fails every job at once) so they do not all come back in the same second.
"""

from __future__ import annotations

import email.utils
import random
from datetime import UTC, datetime

# Each delay is stretched or shrunk by up to this share.
JITTER = 0.1


def retry_delay_s(
    first_s: float,
    attempt: int = 1,
    *,
    retry_after_s: float | None = None,
    max_retry_after_s: float,
) -> float:
    """Seconds before retry `attempt` (from 1): `first_s`, doubled for each retry before it,
    give or take `JITTER`; never sooner than the other side's Retry-After, which is honoured up
    to `max_retry_after_s`."""
    delay: float = first_s * 2 ** (attempt - 1) * random.uniform(1 - JITTER, 1 + JITTER)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max_retry_after_s))
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
