"""Job events heard inside the job's own transaction: how features above jobs follow a job.

A job *announces* two events as `relight.jobs.lifecycle` moves it: `start` (its first attempt
was claimed) and `completed` (it succeeded, failed or was canceled). Each subscriber is called
in the transaction that made the move, with the row as the move left it, so what it writes
commits or rolls back with the move (the webhooks write their delivery rows so: a crash after
the commit loses no delivery). A subscriber answers the id of a webhook delivery it created,
which `lifecycle.announce` enqueues once the caller committed, or None.

Jobs sit below the features that follow them and never import them: `relight.webhooks`
subscribes when it is imported (its package's `__init__`), as the api and the worker do.
Not to be confused with `relight.jobs.events`: those notifications go out over Redis after the
commit, to wake waiters and followers.
"""

from __future__ import annotations

import uuid
from typing import Final, Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from relight.core.models import Job
from relight.core.storage.urls import UrlBuilder

JobEvent = Literal["start", "completed"]
START: Final = "start"
COMPLETED: Final = "completed"


class JobEventSubscriber(Protocol):
    """Hears `event` for `job` in the caller's transaction; the webhook delivery it created
    (to enqueue after the commit), or None."""

    async def __call__(
        self, session: AsyncSession, job: Job, event: str, urls: UrlBuilder
    ) -> uuid.UUID | None: ...


_subscribers: list[JobEventSubscriber] = []


def subscribe(subscriber: JobEventSubscriber) -> None:
    """Call `subscriber` on every job event from now on (once, however often subscribed)."""
    if subscriber not in _subscribers:
        _subscribers.append(subscriber)


async def notify_subscribers(
    session: AsyncSession, job: Job, event: JobEvent, urls: UrlBuilder
) -> tuple[uuid.UUID, ...]:
    """Tell every subscriber, in order, that `job` had `event` in this transaction; the webhook
    deliveries they created."""
    deliveries: list[uuid.UUID] = []
    for subscriber in _subscribers:
        delivery = await subscriber(session, job, event, urls)
        if delivery is not None:
            deliveries.append(delivery)
    return tuple(deliveries)
