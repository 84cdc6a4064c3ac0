"""Webhooks: signed (Standard Webhooks), retried, recorded delivery of request events.

Jobs announce their `start` and `completed` events without knowing who listens
(`relight.jobs.subscribers`); importing any part of this package subscribes
`service.schedule_delivery`, which writes the delivery row in the job's own transaction. The api
and the worker import it, so every process that moves jobs writes their deliveries.
"""

from relight.jobs.subscribers import subscribe
from relight.webhooks.service import schedule_delivery

subscribe(schedule_delivery)
