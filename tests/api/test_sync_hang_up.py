"""A `POST /v1/ic-light` caller that hangs up before its image is ready never learns the
request's id, so nobody could fetch the result: the request is canceled and refunded.

Against the app served by uvicorn on 127.0.0.1, with a client that really closes its
connection (the in-process transport cannot hang up)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from relight.core.config import Settings
from tests.conftest import TenantKey
from tests.fakes.segmind import background_worker as worker_running
from tests.hardening.live import serve
from tests.helpers import balance_of, fast_body, small_body
from tests.waiting import wait_until


async def job_of(engine: AsyncEngine, tenant_id: uuid.UUID) -> tuple[uuid.UUID, str] | None:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT id, status FROM job WHERE tenant_id = :tenant"), {"tenant": tenant_id}
            )
        ).first()
    return None if row is None else (row.id, row.status)


async def ledger_of(engine: AsyncEngine, job_id: uuid.UUID) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT kind, amount FROM credit_entry WHERE job_id = :job"), {"job": job_id}
        )
        return {row.kind: row.amount for row in rows}


async def test_a_v1_caller_that_hangs_up_before_its_image_is_ready_is_canceled_and_refunded(
    settings: Settings, tenant: TenantKey, engine: AsyncEngine, clean_state: None
) -> None:
    before = await balance_of(engine, tenant.tenant_id)
    # No worker runs: the job waits in the queue (as behind a busy worker) while its caller
    # gives up, as Segmind's SDK does after its timeout.
    async with serve(create_app(settings)) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            call = asyncio.create_task(
                client.post("/v1/ic-light", headers=tenant.headers, json=small_body())
            )

            async def accepted() -> bool:
                return await job_of(engine, tenant.tenant_id) is not None

            await wait_until(accepted, what="the request was accepted")
            assert await balance_of(engine, tenant.tenant_id) < before
            call.cancel()  # closes the connection: the caller hangs up
            with contextlib.suppress(asyncio.CancelledError):
                await call

        async def canceled() -> bool:
            found = await job_of(engine, tenant.tenant_id)
            return found is not None and found[1] == "canceled"

        await wait_until(canceled, what="the hung-up request was canceled")
        found = await job_of(engine, tenant.tenant_id)
        assert found is not None
        ledger = await ledger_of(engine, found[0])
        assert set(ledger) == {"reserve", "refund"}
        assert ledger["reserve"] + ledger["refund"] == 0
        assert await balance_of(engine, tenant.tenant_id) == before


async def test_a_v1_caller_that_waits_still_gets_its_image(
    settings: Settings,
    tenant: TenantKey,
    engine: AsyncEngine,
    clean_state: None,
    background_worker: None,
) -> None:
    async with (
        serve(create_app(settings)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client,
    ):
        response = await client.post("/v1/ic-light", headers=tenant.headers, json=small_body())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("image/")
    found = await job_of(engine, tenant.tenant_id)
    assert found is not None
    assert found[1] == "succeeded"


async def test_a_v1_caller_that_hangs_up_while_its_job_runs_is_canceled_and_refunded(
    settings: Settings, tenant: TenantKey, engine: AsyncEngine, clean_state: None
) -> None:
    before = await balance_of(engine, tenant.tenant_id)
    # One 3072² image on the local engine: long enough to be caught running.
    slow = fast_body(backend="local", width=1024, height=1024, highres_scale=3)
    async with (
        serve(create_app(settings)) as port,
        worker_running(settings),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client,
    ):
        call = asyncio.create_task(client.post("/v1/ic-light", headers=tenant.headers, json=slow))

        async def running() -> bool:
            found = await job_of(engine, tenant.tenant_id)
            return found is not None and found[1] == "running"

        await wait_until(running, what="the job is running")
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call

        async def canceled() -> bool:
            found = await job_of(engine, tenant.tenant_id)
            return found is not None and found[1] == "canceled"

        await wait_until(canceled, what="the running request was canceled")
    found = await job_of(engine, tenant.tenant_id)
    assert found is not None
    ledger = await ledger_of(engine, found[0])
    assert set(ledger) == {"reserve", "refund"}
    assert ledger["reserve"] + ledger["refund"] == 0
    assert await balance_of(engine, tenant.tenant_id) == before
    async with engine.connect() as connection:
        outputs = await connection.scalar(
            text("SELECT count(*) FROM job_output WHERE job_id = :job"), {"job": found[0]}
        )
    assert outputs == 0
