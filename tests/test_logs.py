"""Logs are JSON lines; a job's lines, in the api and in the worker, carry its id."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest

from relight.config import Settings
from relight.logs import JsonFormatter, TextFormatter, job_context


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
