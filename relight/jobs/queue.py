"""The contract between whoever enqueues a job and the worker that runs it.

Kept in the core so the api and the worker agree without importing each other: the task name,
and the JSON (not pickle) serializer arq uses for job payloads.
"""

from __future__ import annotations

from typing import Any

import orjson

RUN_JOB_TASK = "run_job"


def serialize_job(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data)


def deserialize_job(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(data)
    return result
