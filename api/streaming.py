"""A request's status as Server-Sent Events, woken by the job notifications, read from Postgres.

Each event's id names the state the event shows (`PROCESSING:0.42`, `QUEUED:3`, `COMPLETED`), so
a client that reconnects with `Last-Event-ID` is sent the current state only when it differs
from what it saw last. A finished request answers its terminal events on every connection,
whatever the id: a client that lost the connection just before the end still gets the record.

There is no loop polling Postgres per client: a stream re-reads its job when a notification says
it changed (`relight.jobs.events`), at most once a second for the queue moving around a queued
job, and every `RECHECK_S` in case a notification was lost. sse-starlette does the framing, the
heartbeat comments and the disconnect handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import ServerSentEvent

from api.state import AppState
from relight.core.storage.urls import UrlBuilder
from relight.jobs import queries
from relight.jobs.events import JobFollower
from relight.jobs.schemas import StatusView
from relight.jobs.views import request_view, status_view

# What a lost notification can cost at most (the sync waiter's cap is of the same order).
RECHECK_S = 10.0
# Claims come many a second under load; a queued job's place is re-read at most this often.
QUEUE_RECHECK_S = 1.0
STATUS_EVENT = "status"
DONE_EVENT = "done"


def _event(name: str, model: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["event", "data", "id"],
        "properties": {
            "event": {"const": name},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": f"#/components/schemas/{model}"},
            },
            "id": {"type": "string", "description": "the state shown, for `Last-Event-ID`"},
        },
    }


# One event of the stream: the response's `schema`, as OpenAPI 3.1 documents describe event
# streams (3.2's `itemSchema` is not valid in the 3.1 document). Heartbeat comments are not
# events.
EVENT_SCHEMA: dict[str, Any] = {
    "oneOf": [_event(STATUS_EVENT, "StatusView"), _event(DONE_EVENT, "RequestView")]
}


def event_id(view: StatusView) -> str:
    """The id of the state a status event shows (what a reconnecting client says it saw)."""
    if view.progress is not None:
        return f"{view.status.value}:{view.progress:.4f}"
    if view.queue_position is not None:
        return f"{view.status.value}:{view.queue_position}"
    return view.status.value


async def status_events(
    state: AppState,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    urls: UrlBuilder,
    last_event_id: str | None,
) -> AsyncIterator[ServerSentEvent]:
    """`status` events as the request moves, then `status` and `done` (the full record) once
    it is finished; the stream ends there."""
    seen = last_event_id
    async with state.waiter.follow(job_id) as follower:
        while True:
            follower.clear()
            read_at = time.monotonic()
            async with state.sessionmaker() as session:
                found = await queries.request_state(session, tenant_id, job_id, with_outputs=True)
            job, position = found.job, found.queue_position
            finished = job.job_status.is_terminal
            view = status_view(job, position, urls)
            current = event_id(view)
            if current != seen:
                yield ServerSentEvent(view.model_dump_json(), event=STATUS_EVENT, id=current)
                seen = current
            if finished:
                record = request_view(job, found.outputs, urls)
                yield ServerSentEvent(record.model_dump_json(), event=DONE_EVENT, id=current)
                return
            follower.queued = position is not None
            await _next_change(follower, read_at)


async def _next_change(follower: JobFollower, read_at: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(follower.woken.wait(), timeout=RECHECK_S)
    if follower.woken.is_set() and not follower.own:
        # Only the queue moved: let further claims gather before re-reading the position.
        await asyncio.sleep(max(0.0, read_at + QUEUE_RECHECK_S - time.monotonic()))
