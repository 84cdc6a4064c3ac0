"""How the operators' page tells a request's attempts and credits (issue 27): every attempt
accounted for, with the reason an attempt left no entry in the attempt log, and the credits
as the ledger moved them."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from relight.core.models import Job
from relight.ops.requests import attempts_told, credits_told

LOGGED = {"attempt": 1, "backend": "gpu", "outcome": "failed", "code": "node_gone"}


def job(**values: Any) -> Job:
    return Job(id=uuid.uuid4(), params={}, seed=1, backend_requested="auto", **values)


@pytest.mark.parametrize(
    ("values", "told"),
    [
        ({"status": "queued", "attempts": 0, "backend_calls": []},
         "no attempt yet (waiting in the queue)"),
        ({"status": "canceled", "attempts": 0, "backend_calls": []},
         "no attempt: CANCELED before any worker took it"),
        ({"status": "failed", "attempts": 1, "backend_calls": [],
          "error_code": "input_fetch_failed", "error_message": "HTTP 404"},
         "1 attempt; no backend call recorded (failed before dispatch: input_fetch_failed: "
         "HTTP 404)"),
        ({"status": "queued", "attempts": 1, "backend_calls": [],
          "error_code": "input_fetch_failed", "error_message": "timed out"},
         "1 attempt; no backend call recorded (failed before dispatch: input_fetch_failed: "
         "timed out); waiting in the queue for the next"),
        ({"status": "running", "attempts": 2, "backend_calls": [LOGGED]},
         "2 attempts; 1 reached a backend (below), 1 did not (the current one is running)"),
        ({"status": "failed", "attempts": 3, "backend_calls": [LOGGED],
          "error_code": "worker_lost", "error_message": "the worker stopped answering"},
         "3 attempts; 1 reached a backend (below), 2 did not (worker_lost: the worker stopped "
         "answering)"),
        ({"status": "canceled", "attempts": 1, "backend_calls": []},
         "1 attempt; no backend call recorded (canceled while it ran)"),
        ({"status": "succeeded", "attempts": 2, "backend_calls": [LOGGED, LOGGED]},
         "2 attempts, each recorded below"),
    ],
)  # fmt: skip
def test_every_attempt_is_accounted_for(values: dict[str, Any], told: str) -> None:
    assert attempts_told(job(**values)) == told


@pytest.mark.parametrize(
    ("entries", "told"),
    [
        ({}, "no entry"),
        ({"reserve": -10}, "reserved 10 · not settled yet"),
        ({"reserve": -10, "refund": 10}, "reserved 10 · charged 0 · refunded 10"),
        ({"reserve": -10, "charge": 0}, "reserved 10 · charged 10"),
        ({"reserve": -10, "charge": 2}, "reserved 10 · charged 8 · released 2"),
    ],
)
def test_credits_are_told_from_the_ledger_entries(entries: dict[str, int], told: str) -> None:
    assert str(credits_told(entries)) == told
