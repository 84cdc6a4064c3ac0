"""Status streams per API key and per tenant (issue 28, break 3): beyond the limit a stream is
refused with 429, `Retry-After` and the error body; a stream that ends, or whose client
leaves, gives its slot back. Served by a real uvicorn on 127.0.0.1 (streams need one)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.app import create_app
from relight.core.config import Settings
from relight.tenants.service import create_api_key, find_tenant
from tests.conftest import TenantKey
from tests.hardening.live import serve
from tests.helpers import fast_body, submit

PER_KEY = 2
PER_TENANT = 3


@pytest.fixture
async def api(settings: Settings, clean_state: None) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings.model_copy(
            update={
                "max_streams_per_key": PER_KEY,
                "max_streams_per_tenant": PER_TENANT,
                "status_stream_ping_s": 0.2,
            }
        )
    )
    async with serve(app) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client


class OpenStream:
    """A status stream held open (its first bytes read) until closed."""

    def __init__(self, client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
        self.stack = contextlib.AsyncExitStack()
        self.client, self.path, self.headers = client, path, headers
        self.response: httpx.Response | None = None
        self.chunks: AsyncIterator[bytes] | None = None

    async def open(self) -> httpx.Response:
        response = await self.stack.enter_async_context(
            self.client.stream("GET", self.path, headers=self.headers)
        )
        self.response = response
        if response.status_code == 200:
            # The first event: the stream is open. (Held: an iterator dropped closes it.)
            self.chunks = response.aiter_bytes()
            await anext(self.chunks)
        else:
            await response.aread()
        return response

    async def close(self) -> None:
        await self.stack.aclose()


async def open_stream(
    client: httpx.AsyncClient, request_id: str, headers: dict[str, str]
) -> tuple[OpenStream, httpx.Response]:
    stream = OpenStream(client, f"/v2/requests/{request_id}/status/stream", headers)
    return stream, await stream.open()


def assert_refused(response: httpx.Response, limit: int) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert body["code"] == "too_many_streams"
    assert set(body) >= {"error", "code", "request_id"}
    assert body["limit"] == limit


async def eventually_accepted(
    client: httpx.AsyncClient, request_id: str, headers: dict[str, str]
) -> OpenStream:
    for _ in range(100):
        stream, response = await open_stream(client, request_id, headers)
        if response.status_code == 200:
            return stream
        await stream.close()
        await asyncio.sleep(0.05)
    raise AssertionError("the slot was never given back")


async def test_one_key_past_its_limit_gets_429_until_a_stream_closes(
    api: httpx.AsyncClient, tenant: TenantKey
) -> None:
    # Queued, with no worker: its streams stay open.
    request_id = await submit(api, tenant, fast_body())
    held = []
    for _ in range(PER_KEY):
        stream, response = await open_stream(api, request_id, tenant.headers)
        assert response.status_code == 200
        held.append(stream)

    refused, response = await open_stream(api, request_id, tenant.headers)
    assert_refused(response, PER_KEY)
    await refused.close()

    await held.pop().close()  # the client leaves: its slot comes back
    held.append(await eventually_accepted(api, request_id, tenant.headers))
    for stream in held:
        await stream.close()


async def test_the_tenant_limit_holds_across_its_keys(
    api: httpx.AsyncClient,
    tenant: TenantKey,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as session, session.begin():
        owner = await find_tenant(session, tenant.name)
        other_key = (await create_api_key(session, owner, "second")).key
    other = {"x-api-key": other_key}
    request_id = await submit(api, tenant, fast_body())
    held = [(await open_stream(api, request_id, tenant.headers))[0] for _ in range(PER_KEY)]
    stream, response = await open_stream(api, request_id, other)
    assert response.status_code == 200
    held.append(stream)

    refused, response = await open_stream(api, request_id, other)
    assert_refused(response, PER_TENANT)
    await refused.close()

    for stream in held:
        await stream.close()
    # Every slot came back: each key opens its limit again.
    again = [await eventually_accepted(api, request_id, tenant.headers) for _ in range(PER_KEY)]
    again.append(await eventually_accepted(api, request_id, other))
    for stream in again:
        await stream.close()


async def test_a_finished_request_s_streams_give_their_slots_back(
    api: httpx.AsyncClient, tenant: TenantKey
) -> None:
    request_id = await submit(api, tenant, fast_body())
    canceled = await api.post(f"/v2/requests/{request_id}/cancel", headers=tenant.headers)
    assert canceled.status_code == 200, canceled.text
    # Each stream of a finished request ends by itself, after its final events.
    for _ in range(PER_KEY * 3):
        response = await api.get(f"/v2/requests/{request_id}/status/stream", headers=tenant.headers)
        assert response.status_code == 200, response.text
        assert "event: done" in response.text
