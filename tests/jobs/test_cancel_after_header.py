"""`Cancel-After` read as Replicate writes it (`30s`, `5m`, `1h`, `1m30s`), and refused with a
message naming the header when it is anything else."""

from __future__ import annotations

from datetime import timedelta

import pytest

from relight.jobs.deadlines import InvalidCancelAfter, parse_cancel_after


@pytest.mark.parametrize(
    ("header", "duration"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("1m30s", timedelta(minutes=1, seconds=30)),
        ("1h2m3s", timedelta(hours=1, minutes=2, seconds=3)),
        ("1.5s", timedelta(seconds=1.5)),
        ("250ms", timedelta(milliseconds=250)),
        ("2m500ms", timedelta(minutes=2, milliseconds=500)),
        (" 45S ", timedelta(seconds=45)),
        ("90", timedelta(seconds=90)),
        ("24h", timedelta(days=1)),
    ],
)
def test_durations_in_replicates_format_are_read(header: str, duration: timedelta) -> None:
    assert parse_cancel_after(header) == duration


@pytest.mark.parametrize(
    "header",
    [
        "",
        "soon",
        "s",
        "-5s",
        "5 m",
        "5x",
        "m5",
        "1d",
        "1h1",
        "0s",
        "25h",
        "0.0m",
        "9" * 400 + "h",
        "1e9s",
        "nan",
        "inf",
    ],
)
def test_anything_else_is_refused_naming_the_header(header: str) -> None:
    with pytest.raises(InvalidCancelAfter) as refused:
        parse_cancel_after(header)
    assert refused.value.status_code == 422
    assert refused.value.code == "invalid_cancel_after"
    assert "Cancel-After" in refused.value.message
