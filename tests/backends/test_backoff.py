"""When to try again: `relight.core.backoff`, shared by job retries and webhook deliveries."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta

import pytest

from relight.core.backoff import JITTER, parse_retry_after, retry_delay_s


@pytest.mark.parametrize(("attempt", "base"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0)])
def test_the_delay_doubles_per_attempt_give_or_take_the_jitter(attempt: int, base: float) -> None:
    delays = {retry_delay_s(2.0, attempt, max_retry_after_s=600) for _ in range(50)}
    assert all(base * (1 - JITTER) <= delay <= base * (1 + JITTER) for delay in delays)
    assert len(delays) > 1  # jittered, so retries that failed together spread out


def test_retry_after_wins_when_longer_up_to_the_cap() -> None:
    assert retry_delay_s(1.0, retry_after_s=30, max_retry_after_s=600) == 30
    assert retry_delay_s(1.0, retry_after_s=10_000, max_retry_after_s=600) == 600
    assert retry_delay_s(100.0, retry_after_s=0, max_retry_after_s=600) >= 90


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    later = datetime.now(UTC) + timedelta(seconds=90)
    seconds = parse_retry_after(email.utils.format_datetime(later, usegmt=True))
    assert seconds is not None
    assert 85 <= seconds <= 90
    past = email.utils.format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(past) == 0.0
