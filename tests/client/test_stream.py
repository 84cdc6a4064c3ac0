"""`stream()` reads the server's status stream (Server-Sent Events), survives a stream cut on the
way, and falls back to polling a server that has none; all through real servers on 127.0.0.1."""

from __future__ import annotations

import pytest
from relight_client import AsyncRelight, NotFoundError, Relight, Status

from tests.client.conftest import Account, fast
from tests.fakes.cutting_relay import CuttingRelay
from tests.fakes.flaky_proxy import Fault, FlakyProxy
from tests.helpers import png_bytes

STREAM = "/v2/requests/{}/status/stream"


def _paths(proxy: FlakyProxy, request_id: str) -> list[tuple[str, int | str]]:
    return [
        (exchange.path, exchange.outcome)
        for exchange in proxy.exchanges("GET")
        if request_id in exchange.path
    ]


def test_stream_reads_the_event_stream_not_the_status(
    client: Relight, account: Account, proxy: FlakyProxy
) -> None:
    request = client.relight(png_bytes(), "cat", **fast(steps=20))

    with Relight(proxy.url, account.key) as through_proxy:
        statuses = list(through_proxy.handle(request.id).stream(timeout=60))

    assert statuses[-1].status is Status.COMPLETED
    assert all(status.request_id == request.id for status in statuses)
    # One stream, no polls of /status.
    assert _paths(proxy, request.id) == [(STREAM.format(request.id), 200)]


def test_a_cut_stream_is_resumed_with_last_event_id(
    client: Relight, account: Account, base_url: str
) -> None:
    request = client.relight(png_bytes(), "cat", **fast(steps=20))
    path = STREAM.format(request.id)

    with CuttingRelay(base_url, cut_path=path) as relay, Relight(relay.url, account.key) as relayed:
        statuses = list(relayed.handle(request.id).stream(timeout=60))

    assert statuses[-1].status is Status.COMPLETED
    heads = [head for head in relay.heads() if path in head.split("\r\n", 1)[0]]
    assert len(heads) == 2
    assert "last-event-id" not in heads[0].lower()
    # The second connection says what the first one saw: the server sends only what is new.
    assert "last-event-id: " in heads[1].lower()


def test_a_server_without_the_stream_is_polled(
    client: Relight, account: Account, proxy: FlakyProxy
) -> None:
    request = client.relight(png_bytes(), "cat", **fast())
    path = STREAM.format(request.id)
    # What an older Relight (or a gateway that does not route the path) answers: a plain 404.
    proxy.script("GET", path, [Fault.answer(404)])

    with Relight(proxy.url, account.key) as through_proxy:
        statuses = list(through_proxy.handle(request.id).stream(timeout=60, poll_interval=0.05))

    assert statuses[-1].status is Status.COMPLETED
    seen = _paths(proxy, request.id)
    assert seen[0] == (path, 404)
    assert set(seen[1:]) == {(f"/v2/requests/{request.id}/status", 200)}


def test_streaming_an_unknown_request_is_not_found(client: Relight) -> None:
    with pytest.raises(NotFoundError) as raised:
        list(client.handle("00000000-0000-7000-8000-000000000000").stream(timeout=10))

    assert raised.value.code is not None


async def test_the_async_stream_reads_events_too(
    base_url: str, account: Account, proxy: FlakyProxy
) -> None:
    async with AsyncRelight(proxy.url, account.key) as aclient:
        request = await aclient.relight(png_bytes(), "cat", **fast(steps=20))
        statuses = [status async for status in request.stream(timeout=60)]

    assert statuses[-1].status is Status.COMPLETED
    assert _paths(proxy, request.id) == [(STREAM.format(request.id), 200)]
