"""A request's page says what happened as the API and the ledger say it (issue 27): the API's
status words, the backend asked for apart from the one used, every attempt accounted for, and
the credits reserved, charged and refunded."""

from __future__ import annotations

import re

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import MakeTenant, RunWorker
from tests.fakes.image_server import ImageServer
from tests.helpers import balance_of, fast_body, submit
from tests.ui.conftest import sign_in


def cell(page: str, cell_id: str) -> str:
    """The text of the table cell with id `cell_id`, tags removed."""
    found = re.search(rf'<td id="{cell_id}">(.*?)</td>', page, re.S)
    assert found is not None, cell_id
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


async def test_a_request_that_failed_before_any_backend_says_so_and_shows_its_refund(
    ui_client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    run_worker: RunWorker,
    image_server: ImageServer,
    engine: AsyncEngine,
) -> None:
    tenant = await make_tenant("acme", credits=1000)
    # The subject's URL answers 404: the job fails fetching its input, before any backend.
    request_id = await submit(
        ui_client, tenant, fast_body(subject_image=image_server.url("/missing"))
    )
    await run_worker()
    record = (await ui_client.get(f"/v2/requests/{request_id}", headers=tenant.headers)).json()
    assert record["status"] == "FAILED"
    await sign_in(ui_client)

    page = (await ui_client.get(f"/admin/ui/requests/{request_id}")).text
    assert '<span class="status failed" id="request-status">FAILED</span>' in page
    assert cell(page, "backend-requested") == "auto"
    assert cell(page, "backend-used") == "none yet"
    attempts = cell(page, "attempts")
    assert attempts.startswith(
        "1 attempt; no backend call recorded (failed before dispatch: input_fetch_failed"
    ), attempts
    assert "No attempt recorded yet" not in page
    assert await balance_of(engine, tenant.tenant_id) == 1000  # all of it came back
    credits = cell(page, "credits")
    reserved = int(re.search(r"reserved (\d+)", credits).group(1))  # type: ignore[union-attr]
    assert reserved > 0
    assert credits.startswith(f"reserved {reserved} · charged 0 · refunded {reserved}"), credits


async def test_a_completed_request_shows_what_it_was_charged_and_the_api_status_words(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant, run_worker: RunWorker
) -> None:
    tenant = await make_tenant("acme", credits=1000)
    done = await submit(ui_client, tenant, fast_body(backend="local"))
    await run_worker()
    waiting = await submit(ui_client, tenant, fast_body(backend="local"))
    await sign_in(ui_client)

    page = (await ui_client.get(f"/admin/ui/requests/{done}")).text
    assert '<span class="status succeeded" id="request-status">COMPLETED</span>' in page
    assert cell(page, "backend-requested") == "local"
    assert cell(page, "backend-used") == "local"
    assert cell(page, "attempts") == "1 attempt, each recorded below"
    credits = cell(page, "credits")
    reserved = int(re.search(r"reserved (\d+)", credits).group(1))  # type: ignore[union-attr]
    assert credits.startswith(f"reserved {reserved} · charged {reserved}"), credits
    assert "refunded" not in credits

    queued = (await ui_client.get(f"/admin/ui/requests/{waiting}")).text
    assert '<span class="status queued" id="request-status">QUEUED</span>' in queued
    assert cell(queued, "attempts") == "no attempt yet (waiting in the queue)"
    assert cell(queued, "credits").startswith("reserved ")
    assert "not settled yet" in cell(queued, "credits")

    listing = (await ui_client.get("/admin/ui/requests", params={"status": "COMPLETED"})).text
    assert done in listing
    assert waiting not in listing
    for stored in ("succeeded", "queued"):
        assert f">{stored}<" not in listing
