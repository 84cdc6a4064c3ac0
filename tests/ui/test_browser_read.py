"""Reading the operators' page in a real browser (issue 27, must show 3, the read side): find a
request by its id (or a pasted URL), page past the first 48 requests and back, the API's status
words, the failing webhook deliveries, and the workers alive now (and one that stopped).

Headless Debian chromium driven by Playwright, as in test_browser.py (its fixtures).
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.async_api import Browser, Page, expect
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.core.models import Job, WebhookDelivery
from relight.jobs.worker_heartbeat import STALE_AFTER_S, WorkerBeat, publish_beat
from tests.conftest import MakeTenant
from tests.fakes.webhook_receiver import Reply, WebhookReceiver
from tests.helpers import fast_body, submit
from tests.ui.conftest import ADMIN_TOKEN, LiveServer, Watched, shot
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


async def signed_in(browser: Browser, base: str) -> tuple[Page, Watched]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    watched = Watched(await context.new_page())
    page = watched.page
    await page.goto(f"{base}/admin/ui/login")
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("#sign-in")
    await expect(page.locator("h1")).to_have_text("Overview")
    return page, watched


def nothing_from_outside(watched: Watched, base: str, *expected_errors: str) -> None:
    """Every request went to the test server, and the browser logged no error but those the
    test caused (a 404 page is logged as one)."""
    assert [url for url in watched.urls if not url.startswith(f"{base}/")] == []
    assert [e for e in watched.console_errors if e not in expected_errors] == []


async def test_an_operator_finds_a_request_by_id_and_pages_past_the_first_48(
    live_server: LiveServer,
    browser: Browser,
    make_tenant: MakeTenant,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    tenant = await make_tenant("acme")
    # 60 requests, one a minute, the oldest first; every fifth failed, the rest completed.
    now = datetime.now(UTC)
    jobs = []
    async with sessionmaker() as session, session.begin():
        for age in range(60, 0, -1):
            job = Job(
                id=uuid.uuid4(),
                tenant_id=tenant.tenant_id,
                status="failed" if age % 5 == 0 else "succeeded",
                params={},
                seed=age,
                backend_requested="auto",
                backend_used="local",
                attempts=1,
                created_at=now - timedelta(minutes=age),
            )
            session.add(job)
            jobs.append(job)
    oldest, newest = str(jobs[0].id), str(jobs[-1].id)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as api:
        queued = await submit(api, tenant, fast_body(backend="local"))  # no worker: it waits
    base = live_server.url
    page, watched = await signed_in(browser, base)

    # The first page: the newest 48, the queued one first, in the API's words.
    await page.click("nav >> text=Requests")
    rows = page.locator("#requests tbody tr")
    await expect(rows).to_have_count(48)
    await expect(rows.first).to_contain_text(queued)
    await expect(rows.first.locator(".status")).to_have_text("QUEUED")
    await expect(page.locator("#requests .status", has_text="COMPLETED").first).to_be_visible()
    await expect(page.locator("#requests .status", has_text="FAILED").first).to_be_visible()
    for stored in ("succeeded", "failed", "queued"):  # the database's words, never shown
        await expect(page.locator("#requests", has_text=re.compile(stored))).to_have_count(0)
    await expect(page.locator("#requests")).not_to_contain_text(oldest)
    await expect(page.locator("#previous-page")).to_have_count(0)

    # Next: the 13 older ones, the oldest last; Previous: back to the newest.
    await page.click("#next-page")
    await expect(rows).to_have_count(13)
    await expect(rows.last).to_contain_text(oldest)
    await expect(page.locator("#next-page")).to_have_count(0)
    await page.click("#previous-page")
    await expect(rows).to_have_count(48)
    await expect(rows.first).to_contain_text(queued)
    await expect(rows.nth(1)).to_contain_text(newest)

    # Filters keep paging: failed ones only, by the API's word.
    await page.select_option("select[name=status]", "FAILED")
    await page.click("#filters button")
    await expect(rows).to_have_count(12)
    await expect(page.locator("#next-page")).to_have_count(0)

    # A pasted status URL finds its request.
    await page.fill("#search-id", f"{base}/v2/requests/{oldest}")
    await page.click("#find")
    await expect(page.locator("h1")).to_contain_text(oldest)
    await expect(page.locator("#request-status")).to_have_text("FAILED")
    await expect(page.locator("#backend-requested")).to_have_text("auto")
    await expect(page.locator("#backend-used")).to_have_text("local")
    # A bare id the same; an unknown one is a page saying so, with a way back.
    await page.goto(f"{base}/admin/ui/requests")
    await page.fill("#search-id", queued)
    await page.click("#find")
    await expect(page.locator("#request-status")).to_have_text("QUEUED")
    await page.goto(f"{base}/admin/ui/requests")
    missing = uuid.uuid4()
    await page.fill("#search-id", str(missing))
    await page.click("#find")
    await expect(page.locator("#error-message")).to_have_text(f"There is no request {missing}.")
    await page.click("#back")
    await expect(page.locator("h1")).to_have_text("Requests")
    not_found = "Failed to load resource: the server responded with a status of 404 (Not Found)"
    nothing_from_outside(watched, base, not_found)


async def test_an_operator_sees_failing_webhooks_and_which_workers_are_alive(
    live_server: LiveServer,
    browser: Browser,
    make_tenant: MakeTenant,
    background_worker: None,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
    ui_settings: Settings,
) -> None:
    tenant = await make_tenant("acme")
    with WebhookReceiver() as receiver:
        receiver.script("/down", [Reply(status=503)] * 20)
        hook = receiver.url("/down")
        async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as api:
            request_id = await submit(api, tenant, fast_body(backend="local", webhook_url=hook))

        async def given_up() -> bool:
            async with sessionmaker() as session:
                status = await session.scalar(
                    select(WebhookDelivery.status).where(
                        WebhookDelivery.job_id == uuid.UUID(request_id)
                    )
                )
            return status == "failed"

        # The running worker renders it, then tries the webhook until the schedule runs out.
        await wait_until(given_up, what="the webhook delivery to give up")

    # A worker that stopped without a clean shutdown: its last beat is old.
    gone = WorkerBeat(
        id="old-host:4242:dead00", host="old-host", pid=4242, queue=ui_settings.queue_name,
        started_at=time.time() - 600, last_seen=time.time() - STALE_AFTER_S - 60,
        tasks_running=1, max_tasks=4, tasks_done=17,
    )  # fmt: skip
    await publish_beat(redis, gone)
    base = live_server.url
    page, watched = await signed_in(browser, base)

    # The overview counts them: one live, one stale.
    await expect(page.locator("#workers-live a")).to_have_text("1")
    await expect(page.locator("#workers-live .stale")).to_have_text("1 stale")

    await page.click("nav >> text=Webhook failures")
    failing = page.locator("#webhook-failures tbody tr")
    await expect(failing).to_have_count(1)
    row = failing.first
    for shown in ("acme", request_id, hook, "HTTP 503", "failed, no more tries"):
        await expect(row).to_contain_text(shown)
    await shot(page, "webhooks")
    await row.locator(f"text={request_id}").click()
    await expect(page.locator("h1")).to_contain_text(request_id)
    await expect(page.locator("#request-status")).to_have_text("COMPLETED")

    await page.click("nav >> text=Workers")
    live = page.locator("#workers tbody tr", has=page.locator(".live"))
    await expect(live).to_have_count(1)
    # The test's own worker, in this process.
    await expect(live).to_contain_text(socket.gethostname())
    await expect(live).to_contain_text(str(os.getpid()))
    stale = page.locator("#workers tbody tr", has=page.locator(".stale"))
    await expect(stale).to_have_count(1)
    await expect(stale).to_contain_text("old-host")
    await shot(page, "workers")
    nothing_from_outside(watched, base)
