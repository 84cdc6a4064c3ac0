"""Logging shared by the api, the worker and the node: JSON lines (or plain text) that say which
HTTP request (`request_id`, the `X-Request-ID` that submitted it) and which job (`job_id`) a line
is about. Both live in context variables, so every line logged inside a request or a job run
carries them without being passed around."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TypeGuard

import orjson

current_job_id: ContextVar[str | None] = ContextVar("relight_job_id", default=None)
current_request_id: ContextVar[str | None] = ContextVar("relight_request_id", default=None)

# A client's X-Request-ID is kept when it is printable ASCII of at most this many characters.
MAX_REQUEST_ID_LENGTH = 128


def valid_request_id(value: str | None) -> TypeGuard[str]:
    """A request id a client may choose: 1–128 printable ASCII characters, no spaces, so it
    cannot forge log lines or headers and stays a cheap, bounded label."""
    return (
        value is not None
        and 0 < len(value) <= MAX_REQUEST_ID_LENGTH
        and all("!" <= char <= "~" for char in value)
    )


@contextlib.contextmanager
def request_context(request_id: str | None) -> Iterator[None]:
    """Every log line inside carries `request_id` (left as it is when `request_id` is None)."""
    if request_id is None:
        yield
        return
    token = current_request_id.set(request_id)
    try:
        yield
    finally:
        current_request_id.reset(token)


@contextlib.contextmanager
def job_context(job_id: object, request_id: str | None = None) -> Iterator[None]:
    """Every log line inside carries `job_id` (the request id of Segmind's API) and, when
    given, the `request_id` of the HTTP request that submitted the job."""
    token = current_job_id.set(str(job_id))
    try:
        with request_context(request_id):
            yield
    finally:
        current_job_id.reset(token)


def _context_of(record: logging.LogRecord) -> tuple[str | None, str | None]:
    """(request_id, job_id) of a line: `extra=` on the call wins over the context."""
    request_id = getattr(record, "request_id", None) or current_request_id.get()
    job_id = getattr(record, "job_id", None) or current_job_id.get()
    return request_id, job_id


def _fields_of(record: logging.LogRecord) -> dict[str, object]:
    """A line's structured fields, given as `extra={"fields": {...}}` (an operator's action:
    who and what changed); they never replace the line's own keys."""
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id, job_id = _context_of(record)
        if request_id is not None:
            line["request_id"] = request_id
        if job_id is not None:
            line["job_id"] = str(job_id)
        for name, value in _fields_of(record).items():
            line.setdefault(name, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id, job_id = _context_of(record)
        tags = []
        if request_id is not None:
            tags.append(f"request {request_id}")
        if job_id is not None:
            tags.append(f"job {job_id}")
        fields = _fields_of(record)
        if fields:
            text += " " + " ".join(f"{name}={value}" for name, value in fields.items())
        return f"{text} [{', '.join(tags)}]" if tags else text


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
