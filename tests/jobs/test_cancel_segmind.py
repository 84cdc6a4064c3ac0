"""Cancel while running on the `segmind` backend: the worker hangs up on the upstream call at
once (Segmind has no cancel), the request ends CANCELED and refunded once, and the worker's slot
serves the next request. Against the stand-in Segmind server, whose hanging answer notes when
the caller leaves."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relight.core.config import Settings
from tests.conftest import MakeTenant, example_base64
from tests.fakes.segmind import (
    Answer,
    SegmindStandIn,
    background_worker,
    relight_client,
    segmind_settings,
)
from tests.helpers import balance_of, get_record, get_status, submit
from tests.jobs.test_cancel_running import ledger_kinds, wait_until_ended
from tests.waiting import wait_until

START = 1000
# Half the hanging answer's 50 s: what leaving the call at once may take on a loaded machine.
HELD_UP_S = 25.0
# A small render through Segmind (the stand-in answers a solid image of the asked size).
SMALL: dict[str, Any] = {
    "prompt": "a cat, warm window light",
    "backend": "segmind",
    "width": 256,
    "height": 320,
    "highres_scale": 1.0,
    "steps": 10,
}


@pytest.fixture
def stand_in() -> Iterator[SegmindStandIn]:
    with SegmindStandIn() as server:
        yield server


async def test_canceling_a_running_segmind_job_hangs_up_upstream_and_refunds_once(
    settings: Settings,
    stand_in: SegmindStandIn,
    make_tenant: MakeTenant,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    # One worker slot and an upstream call that would take 50 s (under a 60 s client timeout).
    # Leaving it at once, against waiting it out, is told apart by HELD_UP_S, which no loaded
    # machine reaches and no wait for the answer stays under.
    segmind = segmind_settings(settings, stand_in, segmind_timeout_s=60.0, worker_concurrency=1)
    stand_in.script([Answer.hang(50.0)])
    tenant = await make_tenant(credits=START)
    body = {**SMALL, "subject_image": example_base64()}
    async with relight_client(segmind) as client, background_worker(segmind):
        request_id = await submit(client, tenant, body)
        for _ in range(400):
            if (
                stand_in.calls()
                and (await get_status(client, tenant, request_id))["status"] == "PROCESSING"
            ):
                break
            await asyncio.sleep(0.05)
        assert len(stand_in.calls()) == 1

        canceled_at = time.monotonic()
        response = await client.post(f"/v2/requests/{request_id}/cancel", headers=tenant.headers)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "CANCELED"

        # The worker leaves the upstream call at once rather than waiting out its answer...
        await wait_until(
            lambda: bool(stand_in.hang_ups()), timeout_s=HELD_UP_S, what="the worker hangs up"
        )
        [hung_up_at] = stand_in.hang_ups()
        assert hung_up_at - canceled_at < HELD_UP_S
        # ...and its only slot serves the next request long before the 50 s answer.
        follower = await submit(client, tenant, body)
        ended = await wait_until_ended(client, tenant, follower, timeout_s=HELD_UP_S)
        assert ended["status"] == "COMPLETED"
        assert time.monotonic() - canceled_at < HELD_UP_S

        record = await get_record(client, tenant, request_id)
        follower_record = await get_record(client, tenant, follower)

    assert record["status"] == "CANCELED"
    assert record["outputs"] == []
    assert record["credits"]["charged"] == 0
    assert await ledger_kinds(sessionmaker, request_id) == Counter({"reserve": 1, "refund": 1})
    assert await ledger_kinds(sessionmaker, follower) == Counter({"reserve": 1, "charge": 1})
    charged = follower_record["credits"]["charged"]
    assert await balance_of(engine, tenant.tenant_id) == START - charged
