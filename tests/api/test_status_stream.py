"""`GET /v2/requests/{id}/status/stream`: Server-Sent Events read with a real streaming client
(httpx-sse) from the app served by uvicorn on 127.0.0.1, with a real worker beside it.

The in-process ASGI transport of the other API tests answers only once the app has finished
the response, so it could not show events arriving while a job runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from httpx_sse import EventSource, ServerSentEvent, aconnect_sse

from api.app import create_app
from api.streaming import RECHECK_S
from relight.core.config import Settings
from scripts.stack import free_port
from tests.conftest import MakeTenant, TenantKey
from tests.fakes.image_server import ImageServer
from tests.fakes.segmind import background_worker
from tests.helpers import fast_body

pytestmark = pytest.mark.slow

PING_S = 0.2
# One 3072² image on the local engine: about 2 s here, several progress writes (every 0.5 s).
SLOW_LOCAL = fast_body(backend="local", width=1024, height=1024, highres_scale=3)


@pytest.fixture
async def api(settings: Settings, clean_state: None) -> AsyncIterator[httpx.AsyncClient]:
    """The app served by uvicorn on a free port (lifespan included); a client for it."""
    app = create_app(settings.model_copy(update={"status_stream_ping_s": PING_S}))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn stopped before it started"
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        await serving


def stream_path(request_id: str) -> str:
    return f"/v2/requests/{request_id}/status/stream"


async def submit(client: httpx.AsyncClient, tenant: TenantKey, body: dict[str, Any]) -> str:
    response = await client.post("/v2/ic-light", headers=tenant.headers, json=body)
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id


async def relight_events(source: EventSource) -> AsyncIterator[ServerSentEvent]:
    """The stream's events, heartbeats left out: httpx-sse turns each heartbeat comment into an
    empty `message` (the SSE spec dispatches nothing for a blank line without data)."""
    async for event in source.aiter_sse():
        if event.data:
            yield event


async def read_until_done(events: AsyncIterator[ServerSentEvent]) -> list[ServerSentEvent]:
    """The events up to `done`; the stream must end right after it."""
    seen: list[ServerSentEvent] = []
    async for event in events:
        seen.append(event)
    assert seen, "the stream ended without an event"
    assert seen[-1].event == "done", [event.event for event in seen]
    return seen


def statuses(events: list[ServerSentEvent]) -> list[dict[str, Any]]:
    return [json.loads(event.data) for event in events if event.event == "status"]


async def test_a_job_streams_from_queued_through_progress_to_completed(
    api: httpx.AsyncClient, tenant: TenantKey, settings: Settings
) -> None:
    request_id = await submit(api, tenant, SLOW_LOCAL)
    async with aconnect_sse(api, "GET", stream_path(request_id), headers=tenant.headers) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        events = relight_events(source)
        first = await anext(events)
        # No worker yet: the request waits first in the queue.
        assert (first.event, first.id) == ("status", "QUEUED:0")
        assert json.loads(first.data)["queue_position"] == 0
        async with background_worker(settings):
            rest = await read_until_done(events)
    updates = statuses([first, *rest])
    assert [update["status"] for update in updates][-1] == "COMPLETED"
    running = [update["progress"] for update in updates if update["status"] == "PROCESSING"]
    assert any(0 < progress < 1 for progress in running), updates
    assert running == sorted(running)
    # Every event says something new, and its id names that state.
    ids = [event.id for event in (first, *rest) if event.event == "status"]
    assert len(ids) == len(set(ids))
    done = rest[-1]
    assert done.id == ids[-1] == "COMPLETED"
    record = json.loads(done.data)
    fetched = (await api.get(f"/v2/requests/{request_id}", headers=tenant.headers)).json()
    # The same JSON as the record (signed URLs carry their own expiry second).
    for answer in (record, fetched):
        answer.pop("output")
        answer.pop("stream_url")
        for output in answer["outputs"]:
            output.pop("url")
    assert record == fetched
    assert record["status"] == "COMPLETED"
    assert [(output["width"], output["height"]) for output in record["outputs"]] == [(3072, 3072)]


async def test_a_failed_job_ends_the_stream(
    api: httpx.AsyncClient, tenant: TenantKey, settings: Settings, image_server: ImageServer
) -> None:
    request_id = await submit(
        api, tenant, fast_body(backend="local", subject_image=image_server.url("/missing"))
    )
    async with (
        background_worker(settings),
        aconnect_sse(api, "GET", stream_path(request_id), headers=tenant.headers) as source,
    ):
        events = await read_until_done(relight_events(source))
    record = json.loads(events[-1].data)
    assert record["status"] == "FAILED"
    assert record["error_code"] == "input_fetch_failed", record
    assert statuses(events)[-1]["status"] == "FAILED"


async def test_queue_position_and_cancel_are_streamed(
    api: httpx.AsyncClient, tenant: TenantKey
) -> None:
    ahead = await submit(api, tenant, fast_body())
    request_id = await submit(api, tenant, fast_body())
    async with aconnect_sse(api, "GET", stream_path(request_id), headers=tenant.headers) as source:
        events = relight_events(source)
        assert (await anext(events)).id == "QUEUED:1"
        # The stream's safety re-check waits RECHECK_S from its last read, which comes after
        # this instant (it reads the queue's move): an end seen within RECHECK_S of it cannot
        # be the re-check's.
        before_last_read = time.monotonic()
        canceled = await api.post(f"/v2/requests/{ahead}/cancel", headers=tenant.headers)
        assert canceled.status_code == 200, canceled.text
        moved = await anext(events)
        assert (moved.event, moved.id) == ("status", "QUEUED:0")
        canceled = await api.post(f"/v2/requests/{request_id}/cancel", headers=tenant.headers)
        assert canceled.status_code == 200, canceled.text
        rest = await read_until_done(events)
    # Woken by the cancel's notification, not by the slow safety re-check.
    assert time.monotonic() - before_last_read < RECHECK_S
    assert [(event.event, event.id) for event in rest] == [
        ("status", "CANCELED"),
        ("done", "CANCELED"),
    ]
    assert json.loads(rest[-1].data)["status"] == "CANCELED"


async def test_a_reconnect_after_the_end_gets_the_terminal_event(
    api: httpx.AsyncClient, tenant: TenantKey
) -> None:
    request_id = await submit(api, tenant, fast_body())
    async with aconnect_sse(api, "GET", stream_path(request_id), headers=tenant.headers) as source:
        first = await anext(relight_events(source))
    # Resuming from what was seen: nothing is repeated until something changes.
    resumed = {**tenant.headers, "Last-Event-ID": first.id}
    async with aconnect_sse(api, "GET", stream_path(request_id), headers=resumed) as source:
        events = relight_events(source)
        canceled = await api.post(f"/v2/requests/{request_id}/cancel", headers=tenant.headers)
        assert canceled.status_code == 200, canceled.text
        ended = await read_until_done(events)
    assert [event.id for event in ended] == ["CANCELED", "CANCELED"]
    # After the terminal event, a reconnect still gets it (and the stream ends again).
    after_end = {**tenant.headers, "Last-Event-ID": ended[-1].id}
    async with aconnect_sse(api, "GET", stream_path(request_id), headers=after_end) as source:
        again = await read_until_done(relight_events(source))
    assert [(event.event, event.id) for event in again] == [("done", "CANCELED")]
    assert json.loads(again[0].data)["request_id"] == request_id
    # An id from an older state gets the final status too; an id never issued is harmless.
    for stale in (first.id, "not-an-id"):
        headers = {**tenant.headers, "Last-Event-ID": stale}
        async with aconnect_sse(api, "GET", stream_path(request_id), headers=headers) as source:
            replay = await read_until_done(relight_events(source))
        assert [(event.event, event.id) for event in replay] == [
            ("status", "CANCELED"),
            ("done", "CANCELED"),
        ]


async def test_heartbeats_keep_a_quiet_stream_alive(
    api: httpx.AsyncClient, tenant: TenantKey
) -> None:
    request_id = await submit(api, tenant, fast_body())
    comments = 0
    async with api.stream("GET", stream_path(request_id), headers=tenant.headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith(":"):
                comments += 1
            if comments == 2:
                break
    assert comments == 2


async def test_another_tenants_request_and_an_unknown_one_are_404(
    api: httpx.AsyncClient, tenant: TenantKey, make_tenant: MakeTenant
) -> None:
    request_id = await submit(api, tenant, fast_body())
    other = await make_tenant("other")
    for path, headers in [
        (stream_path(request_id), other.headers),
        (stream_path("0190c2b4-6f1e-7000-8000-000000000000"), tenant.headers),
    ]:
        response = await api.get(path, headers=headers)
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "not_found"
    response = await api.get(stream_path(request_id))
    assert response.status_code == 401
    response = await api.get(stream_path("not-a-uuid"), headers=tenant.headers)
    assert response.status_code == 422


def test_the_spec_names_the_stream_and_describes_its_events(settings: Settings) -> None:
    spec = create_app(settings).openapi()
    operation = spec["paths"]["/v2/requests/{request_id}/status/stream"]["get"]
    assert operation["operationId"] == "stream_request_status"
    assert [parameter["name"] for parameter in operation["parameters"]] == [
        "request_id",
        "expires",
        "signature",
        "Last-Event-ID",
    ]
    [media_type] = operation["responses"]["200"]["content"]
    assert media_type == "text/event-stream"
    assert {"401", "404", "422", "429"} <= set(operation["responses"])
