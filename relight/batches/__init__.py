"""Batches: a set of ordinary requests sharing a batch id (`POST /v2/batches`).

Importing the package subscribes `service.on_job_event` to job events, which decides a
batch's end (and its one `batch.completed` webhook) in the transaction that ends its last item.
The api and the worker import it, so every process that ends jobs ends their batches.
"""

from relight.batches.service import on_job_event
from relight.jobs.subscribers import subscribe

__all__ = ["on_job_event"]

subscribe(on_job_event)
