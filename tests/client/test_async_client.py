"""`AsyncRelight` against a live api + worker: the same methods as `Relight`, awaited."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from relight_client import (
    AsyncRelight,
    ConflictError,
    NotFoundError,
    Record,
    RequestStatus,
    Status,
    UnprocessableEntityError,
    WaitTimeoutError,
)
from relight_client.admin import AsyncAdmin

from tests.client.conftest import ADMIN_TOKEN, Account, fast
from tests.fakes.image_server import ImageServer
from tests.helpers import png_bytes

pytestmark = pytest.mark.slow


@pytest.fixture
async def aclient(base_url: str, account: Account) -> AsyncIterator[AsyncRelight]:
    async with AsyncRelight(base_url, account.key) as client:
        yield client


async def test_relight_wait_and_download(aclient: AsyncRelight, tmp_path: Path) -> None:
    subject = tmp_path / "subject.png"
    subject.write_bytes(png_bytes())

    request = await aclient.relight(subject, "cat, soft window light", **fast())
    record = await request.wait(timeout=60)
    paths = await request.download(tmp_path / "out")

    assert record.status is Status.COMPLETED
    assert request.accepted is not None
    assert [path.name for path in paths] == [f"{request.id}-0.png"]
    assert hashlib.sha256(paths[0].read_bytes()).hexdigest() == record.outputs[0].sha256


async def test_run_with_prefer_wait_and_a_url(
    aclient: AsyncRelight, image_server: ImageServer
) -> None:
    request = await aclient.relight(png_bytes(), "cat", wait=30, **fast())
    from_url = await aclient.run(image_server.url("/astronaut.png"), "astronaut", **fast())

    assert request.record is not None
    assert request.record.status is Status.COMPLETED
    assert from_url.status is Status.COMPLETED
    assert from_url.outputs[0].width == 256


async def test_stream_status_get_and_handle(aclient: AsyncRelight) -> None:
    request = await aclient.relight(png_bytes(), "cat", **fast(steps=20))

    statuses: list[RequestStatus] = [s async for s in request.stream(poll_interval=0.05)]

    assert statuses[-1].status is Status.COMPLETED
    assert (await aclient.requests.status(request.id)).status is Status.COMPLETED
    assert (await aclient.requests.get(request.id)).request_id == request.id
    handle = aclient.handle(request.id)
    assert (await handle.status()).status is Status.COMPLETED
    assert (await handle.get()).outputs[0].seed == 7
    assert (await handle.wait(timeout=5)).status is Status.COMPLETED


async def test_list_over_pages_and_account(aclient: AsyncRelight, account: Account) -> None:
    handles = await asyncio.gather(
        *(aclient.relight(png_bytes(), f"cat {n}", wait=30, **fast()) for n in range(3))
    )

    listed = [record async for record in aclient.requests.list(page_size=2)]
    completed = [r async for r in aclient.requests.list(status=Status.COMPLETED, page_size=1)]
    seen = await aclient.account()

    assert sorted(record.request_id for record in listed) == sorted(h.id for h in handles)
    assert [record.created_at for record in listed] == sorted(
        (record.created_at for record in listed), reverse=True
    )
    assert len(completed) == 3
    assert seen.name == account.name
    assert seen.credits == 1000 - sum(record.credits.charged for record in listed)


async def test_cancel_and_wait_timeout(
    aclient: AsyncRelight, base_url: str, account: Account, image_server: ImageServer
) -> None:
    request = await aclient.relight(image_server.url("/broken"), "cat", **fast())

    with pytest.raises(WaitTimeoutError):
        await request.wait(timeout=0.3, poll_interval=0.1)
    record = await cancel_when_queued(aclient, request.id)

    assert record.status is Status.CANCELED
    assert (await aclient.account()).credits == 1000
    async with AsyncAdmin(base_url, ADMIN_TOKEN) as admin:
        kinds = [entry.kind async for entry in admin.ledger(account.name, page_size=1)]
    assert kinds == ["refund", "reserve", "grant"]


async def cancel_when_queued(client: AsyncRelight, request_id: str) -> Record:
    """Cancel; while an attempt runs (409) try again, until the request waits to retry."""
    for _ in range(400):
        try:
            return await client.requests.cancel(request_id)
        except ConflictError:
            await asyncio.sleep(0.05)
    raise AssertionError("the request never waited to retry")


async def test_errors(aclient: AsyncRelight) -> None:
    with pytest.raises(NotFoundError) as missing:
        await aclient.handle("0190a3c4-0000-7000-8000-000000000000").get()
    with pytest.raises(UnprocessableEntityError) as invalid:
        await aclient.relight(png_bytes(), "cat", **fast(light_source="Sideways"))

    assert (missing.value.status_code, missing.value.code) == (404, "not_found")
    assert invalid.value.status_code == 422
    assert invalid.value.body["field"] == "light_source"
    assert invalid.value.request_id
