"""Logs are JSON lines; a job's lines, in the api and in the worker, carry its id."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest

from relight.core.config import Settings
from relight.core.logs import (
    JsonFormatter,
    TextFormatter,
    job_context,
    request_context,
    valid_request_id,
)


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("relight.test", logging.INFO, __file__, 1, message, None, None)


def test_a_json_line_carries_the_job_id_inside_its_context() -> None:
    formatter = JsonFormatter()
    with job_context("01a2-job"):
        inside = orjson.loads(formatter.format(record("inside")))
    outside = orjson.loads(formatter.format(record("outside")))

    assert inside["job_id"] == "01a2-job"
    assert inside["message"] == "inside"
    assert inside["level"] == "info"
    assert "job_id" not in outside


def test_exceptions_stay_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failing = logging.LogRecord(
            "relight.test", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    line = JsonFormatter().format(failing)
    assert "\n" not in line
    assert "ValueError: boom" in orjson.loads(line)["exception"]


def test_the_text_format_names_the_job() -> None:
    with job_context("abc"):
        assert TextFormatter().format(record("hello")).endswith("hello [job abc]")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_both_formats_are_accepted_by_the_settings(fmt: str) -> None:
    assert Settings(log_format=fmt).log_format == fmt


def test_a_line_carries_the_request_id_of_its_context_and_extra_wins() -> None:
    formatter = JsonFormatter()
    with request_context("req-1"), job_context("job-1"):
        inside = orjson.loads(formatter.format(record("inside")))
    with job_context("job-2", "req-2"):
        nested = orjson.loads(formatter.format(record("nested")))
    explicit = record("explicit")
    explicit.request_id = "req-3"
    outside = orjson.loads(formatter.format(explicit))

    assert (inside["request_id"], inside["job_id"]) == ("req-1", "job-1")
    assert (nested["request_id"], nested["job_id"]) == ("req-2", "job-2")
    assert outside["request_id"] == "req-3"
    assert "job_id" not in outside
    with request_context("req-4"), job_context("abc"):
        assert TextFormatter().format(record("hi")).endswith("hi [request req-4, job abc]")


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("abc-123_./:=+", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        (None, False),
        ("with space", False),
        ("new\nline", False),
        ("ünï", False),
    ],
)
def test_which_client_request_ids_are_kept(value: str | None, valid: bool) -> None:
    assert valid_request_id(value) is valid


def test_a_lines_structured_fields_are_written_beside_its_own_keys_never_over_them() -> None:
    line = record("operator action")
    line.fields = {"operator_session": "3f9c0a1b2d4e", "amount": 500, "message": "forged"}
    with request_context("req-5"):
        written = orjson.loads(JsonFormatter().format(line))
        text = TextFormatter().format(line)
    assert written["operator_session"] == "3f9c0a1b2d4e"
    assert written["amount"] == 500
    assert written["message"] == "operator action"
    assert written["request_id"] == "req-5"
    assert "operator_session=3f9c0a1b2d4e amount=500" in text
