"""UUIDv7 ids sort by the instant they encode, to a quarter of a microsecond."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from relight.core.ids import uuid7


def test_ids_of_instants_in_one_millisecond_sort_by_instant() -> None:
    """The 12 bits after the milliseconds are the millisecond's fraction, not random bits
    (with random bits, two instants in one millisecond sorted either way)."""
    start = datetime(2026, 11, 27, 12, 0, 0, 123000, tzinfo=UTC)
    instants = [start + timedelta(microseconds=n) for n in range(1000)]
    for _ in range(5):
        ids = [uuid7(at) for at in instants]
        assert ids == sorted(ids)


def test_an_id_is_a_version_7_rfc_9562_uuid_of_its_millisecond() -> None:
    at = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)
    made = uuid7(at)
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert made.int >> 80 == int(at.timestamp() * 1000)
    assert uuid7() != uuid7()
