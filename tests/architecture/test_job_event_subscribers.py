"""Every process that moves jobs hears their events: the webhooks subscribe when their package is
imported (`relight/webhooks/__init__.py`), so an entry point that moved jobs without importing
it would silently write no webhook deliveries; so do the batches (`relight/batches/__init__.py`),
which end a batch in the transaction that ends its last item. Each entry point is imported
alone, in a fresh interpreter, and must come up with both subscribers registered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import importlib, sys
importlib.import_module(sys.argv[1])
from relight.jobs import subscribers
names = [f"{s.__module__}.{s.__qualname__}" for s in subscribers._subscribers]
assert "relight.webhooks.service.schedule_delivery" in names, names
assert "relight.batches.service.on_job_event" in names, names
"""


@pytest.mark.parametrize(
    "entry_point",
    [
        "api.app",  # the gateway: submit, cancel
        "worker.settings",  # the worker: the runner and the sweeper
    ],
)
def test_an_entry_point_that_moves_jobs_subscribes_the_webhooks(entry_point: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", CHECK, entry_point],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
