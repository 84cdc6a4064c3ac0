"""Time-ordered UUIDs (version 7), so ids sort by creation and index well."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS_PER_MS = 1_000_000


def uuid7(at: datetime | None = None) -> uuid.UUID:
    """RFC 9562 UUIDv7 of the instant `at` (default: now): 48-bit Unix milliseconds, then 12
    bits of the millisecond's fraction (RFC 9562 §6.2, method 3), then 62 random bits.

    The fraction makes ids sort by their instant to a quarter of a microsecond, so rows whose
    `created_at` is the instant their id was made list in the same order by either.
    """
    if at is None:
        ns = time.time_ns()
    else:
        ns = (at - _EPOCH) // timedelta(microseconds=1) * 1000
    millis, within = divmod(ns, _NS_PER_MS)
    fraction = within * 4096 // _NS_PER_MS
    rand = int.from_bytes(os.urandom(8), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= fraction << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)
