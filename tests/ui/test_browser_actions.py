"""The operators' page's actions in a real browser (issue 27, must show 3): cancel a queued
request, redeliver a webhook (a request's, and a batch's from the webhook failures), grant
credits, revoke a key and edit limits, each confirmed on
its own page and then flashed with what happened; a form whose CSRF token is missing or wrong
is refused with a 403 page; the 6th wrong admin token in a minute gets a 429 page with
`Retry-After`.

Headless Debian chromium driven by Playwright, as `tests/ui/test_browser.py`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.async_api import Browser, Page, expect
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.core.config import Settings
from tests.conftest import MakeTenant, RunWorker
from tests.fakes.webhook_receiver import Reply, WebhookReceiver
from tests.helpers import balance_of, fast_body
from tests.ui.conftest import ADMIN_TOKEN, LiveServer, shot

pytestmark = pytest.mark.slow

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


async def signed_in(browser: Browser, live_server: LiveServer) -> Page:
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{live_server.url}/admin/ui/login")
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("#sign-in")
    await expect(page.locator("h1")).to_have_text("Overview")
    return page


async def confirm(
    page: Page, question: str | re.Pattern[str], screenshot: str | None = None
) -> None:
    """On the confirmation page: check what it says will happen, then confirm."""
    await expect(page.locator("#confirm-question")).to_have_text(question)
    if screenshot is not None:
        await shot(page, screenshot)
    await page.click("#confirm")


async def test_an_operator_cancels_a_queued_request_and_sees_the_refund(
    live_server: LiveServer, browser: Browser, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    tenant = await make_tenant("acme", credits=1000)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as api:
        submitted = await api.post("/v2/ic-light", headers=tenant.headers, json=fast_body())
        assert submitted.status_code == 202, submitted.text
        request_id = submitted.json()["request_id"]
        reserved = 1000 - await balance_of(engine, tenant.tenant_id)
        page = await signed_in(browser, live_server)
        await page.goto(f"{live_server.url}/admin/ui/requests/{request_id}")
        await page.click("#cancel-request button")
        await confirm(
            page,
            re.compile(rf"^Cancel request {request_id} of tenant acme\? It is QUEUED"),
            screenshot="confirm",
        )
        await expect(page).to_have_url(re.compile(rf"/admin/ui/requests/{request_id}\?flash="))
        flash = page.locator("#flash")
        await expect(flash).to_contain_text("now CANCELED")
        await expect(flash).to_contain_text("refunded; balance now 1,000")
        await expect(page.locator("#request-status")).to_have_text(
            re.compile("canceled", re.IGNORECASE)
        )
        # Nothing left to cancel on the page.
        await expect(page.locator("#cancel-request")).to_have_count(0)
        record = await api.get(f"/v2/requests/{request_id}", headers=tenant.headers)
        assert record.json()["status"] == "CANCELED"
        ledger = (await api.get("/admin/v1/tenants/acme/ledger", headers=ADMIN)).json()
    assert (ledger["data"][0]["kind"], ledger["data"][0]["amount"]) == ("refund", reserved)
    assert await balance_of(engine, tenant.tenant_id) == 1000
    await page.goto(f"{live_server.url}/admin/ui/tenants/acme")
    await expect(page.locator("#ledger tbody tr").first).to_contain_text(f"+{reserved}")


async def test_an_operator_redelivers_a_webhook_and_the_receiver_gets_it_again(
    live_server: LiveServer,
    browser: Browser,
    make_tenant: MakeTenant,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
) -> None:
    tenant = await make_tenant("acme", credits=1000)
    hook = receiver.url("/hook")
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as api:
        submitted = await api.post(
            "/v2/ic-light", headers=tenant.headers, json=fast_body(webhook_url=hook)
        )
        assert submitted.status_code == 202, submitted.text
        request_id = submitted.json()["request_id"]
        await run_worker()
    [first] = await receiver.wait_for("/hook", 1)

    page = await signed_in(browser, live_server)
    await page.goto(f"{live_server.url}/admin/ui/requests/{request_id}")
    await page.click("#redeliver button")
    await confirm(
        page,
        f"Send the 1 webhook of request {request_id} (tenant acme) again to {hook}? The "
        "receiver gets each again with the same webhook-id.",
    )
    await expect(page.locator("#flash")).to_have_text(
        f"Redelivering 1 webhook of request {request_id} to {hook}: queued now."
    )
    await run_worker()
    first_again, second = await receiver.wait_for("/hook", 2)
    assert first_again == first
    assert second.webhook_id == first.webhook_id
    assert second.body == first.body
    # The attempt says who asked.
    await page.reload()
    await expect(page.get_by_text(re.compile(r"^operator:[0-9a-f]{12}$"))).to_have_count(1)


async def failed_batch(
    live_server: LiveServer, tenant_headers: dict[str, str], run_worker: RunWorker, hook: str
) -> str:
    """A batch of one request whose `batch.completed` the receiver refused on every attempt
    (the test settings' schedule), so it failed for good; its id."""
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as api:
        submitted = await api.post(
            "/v2/batches",
            headers=tenant_headers,
            json={"requests": [fast_body()], "webhook_url": hook},
        )
        assert submitted.status_code == 202, submitted.text
        await run_worker()  # renders the item, then tries batch.completed until it gives up
    batch_id: str = submitted.json()["batch_id"]
    return batch_id


async def test_an_operator_sends_a_batchs_failed_webhook_again_from_the_failures_list(
    live_server: LiveServer,
    browser: Browser,
    make_tenant: MakeTenant,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
) -> None:
    tenant = await make_tenant("acme", credits=1000)
    receiver.script("/down", [Reply(status=503)] * 4)  # every attempt; then it answers 200
    hook = receiver.url("/down")
    batch_id = await failed_batch(live_server, tenant.headers, run_worker, hook)
    refused = await receiver.wait_for("/down", 4)

    page = await signed_in(browser, live_server)
    await page.goto(f"{live_server.url}/admin/ui/webhooks")
    row = page.locator("#webhook-failures tbody tr", has_text=batch_id)
    await expect(row).to_contain_text("batch.completed")
    await expect(row).to_contain_text("failed, no more tries")
    await row.locator("form.redeliver-batch button").click()
    await confirm(
        page,
        f"Send the 1 webhook of batch {batch_id} (tenant acme) again to {hook}? The receiver "
        "gets each again with the same webhook-id.",
    )
    await expect(page).to_have_url(re.compile(r"/admin/ui/webhooks\?flash="))
    await expect(page.locator("#flash")).to_have_text(
        f"Redelivering 1 webhook of batch {batch_id} to {hook}: queued now."
    )
    # Nothing is sent before the operator confirmed, and once after.
    assert len(receiver.received("/down")) == 4
    await run_worker()
    *_, again = await receiver.wait_for("/down", 5)
    assert again.webhook_id == refused[0].webhook_id
    assert again.body == refused[0].body
    assert json.loads(again.body)["event"] == "batch.completed"
    # Delivered now: off the failures list; the attempt says who asked.
    await page.goto(f"{live_server.url}/admin/ui/webhooks")
    await expect(page.locator("#webhook-failures")).to_contain_text("No failing webhook delivery.")
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as api:
        listed = await api.get(f"/v2/batches/{batch_id}/webhooks", headers=tenant.headers)
    [delivery] = listed.json()["data"]
    assert delivery["status"] == "delivered"
    last = delivery["attempt_log"][-1]
    assert (last["status_code"], last["number"]) == (200, 5)
    assert re.fullmatch(r"operator:[0-9a-f]{12}", last["requested_by"])


async def test_a_batchs_redeliver_form_with_a_tampered_csrf_token_gets_the_403_page(
    live_server: LiveServer,
    browser: Browser,
    make_tenant: MakeTenant,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
) -> None:
    tenant = await make_tenant("acme", credits=1000)
    receiver.script("/down", [Reply(status=503)] * 4)
    batch_id = await failed_batch(live_server, tenant.headers, run_worker, receiver.url("/down"))
    await receiver.wait_for("/down", 4)

    page = await signed_in(browser, live_server)
    await page.goto(f"{live_server.url}/admin/ui/webhooks")
    form = page.locator(f'form.redeliver-batch[data-batch="{batch_id}"]')
    await form.evaluate(
        "form => { form.querySelector('[name=csrf_token]').value = 'f'.repeat(64); }"
    )
    async with page.expect_navigation() as navigation:
        await form.locator("button").click()
    response = await navigation.value
    assert response is not None
    assert response.status == 403
    await expect(page.locator("h1")).to_have_text("Refused")
    await expect(page.locator("p.error")).to_contain_text("did not come from this page")
    await run_worker()
    assert len(receiver.received("/down")) == 4
    await page.goto(f"{live_server.url}/admin/ui/webhooks")
    await expect(page.locator("#webhook-failures tbody tr", has_text=batch_id)).to_contain_text(
        "failed, no more tries"
    )


async def test_an_operator_revokes_a_key_and_edits_limits(
    live_server: LiveServer, browser: Browser, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("acme")
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as api:
        [key] = (await api.get("/admin/v1/tenants/acme/keys", headers=ADMIN)).json()
        assert (await api.get("/v2/account", headers=tenant.headers)).status_code == 200
        page = await signed_in(browser, live_server)
        await page.goto(f"{live_server.url}/admin/ui/tenants/acme")
        row = page.locator(f'#keys tr[data-prefix="{key["prefix"]}"]')
        await expect(row).to_contain_text("test")
        await row.locator("button").click()
        await confirm(
            page, re.compile(rf"^Revoke API key {key['prefix']} \(test\) of tenant acme\?")
        )
        await expect(page.locator("#flash")).to_have_text(
            f"Revoked API key {key['prefix']} (test) of acme: requests with it now get 401."
        )
        assert (await api.get("/v2/account", headers=tenant.headers)).status_code == 401
        await expect(row.locator("button")).to_have_count(0)

        await page.fill("#limits input[name=requests_per_minute]", "60")
        await page.fill("#limits input[name=max_in_flight]", "4")
        await page.click("#limits button")
        await confirm(
            page,
            "Change the limits of tenant acme: requests a minute 120 → 60, at most in flight "
            "20 → 4? They apply from its next request.",
        )
        await expect(page.locator("#flash")).to_contain_text(
            "Limits of acme now 60 requests a minute, burst 30, at most 4 in flight"
        )
        view = (await api.get("/admin/v1/tenants/acme", headers=ADMIN)).json()
    assert view["limits"] == {"requests_per_minute": 60, "burst": 30, "max_in_flight": 4}

    # A change the service refuses comes back on the page with the reason, not as JSON.
    await page.fill("#limits input[name=burst]", "30")
    await page.click("#limits button")
    await expect(page.locator("#action-error")).to_have_text(
        "these are acme's limits already: nothing to change"
    )
    await expect(page.locator("#limits input[name=requests_per_minute]")).to_have_value("60")


async def test_a_form_without_or_with_a_wrong_csrf_token_is_refused_in_the_browser(
    live_server: LiveServer, browser: Browser, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    tenant = await make_tenant("acme", credits=1000)
    page = await signed_in(browser, live_server)
    for tamper in [
        "form => form.querySelector('[name=csrf_token]').remove()",
        "form => { form.querySelector('[name=csrf_token]').value = 'f'.repeat(64); }",
    ]:
        await page.goto(f"{live_server.url}/admin/ui/tenants/acme")
        await page.fill("#grant input[name=amount]", "500")
        await page.fill("#grant input[name=reason]", "forged")
        await page.locator("#grant").evaluate(tamper)
        async with page.expect_navigation() as navigation:
            await page.click("#grant button")
        response = await navigation.value
        assert response is not None
        assert response.status == 403
        await expect(page.locator("h1")).to_have_text("Refused")
        await expect(page.locator("p.error")).to_contain_text("did not come from this page")
    assert await balance_of(engine, tenant.tenant_id) == 1000


async def test_the_sixth_wrong_admin_token_in_a_minute_gets_a_429_page_with_retry_after(
    live_server: LiveServer, browser: Browser, ui_settings: Settings
) -> None:
    assert ui_settings.admin_signin_failures_per_minute == 5
    page = await (await browser.new_context()).new_page()
    statuses = []
    for attempt in range(6):
        await page.goto(f"{live_server.url}/admin/ui/login")
        await page.fill("#token", f"wrong-token-{attempt}")
        async with page.expect_navigation() as navigation:
            await page.click("#sign-in")
        response = await navigation.value
        assert response is not None
        statuses.append(response.status)
    assert statuses == [401] * 5 + [429]
    retry_after = int(await response.header_value("retry-after") or "0")
    assert 1 <= retry_after <= 60
    await expect(page.locator("#login-error")).to_contain_text(
        f"sign-in is refused for {retry_after} s"
    )
    # The right token too, until the minute is over.
    await page.fill("#token", ADMIN_TOKEN)
    async with page.expect_navigation() as navigation:
        await page.click("#sign-in")
    refused = await navigation.value
    assert refused is not None
    assert refused.status == 429
    await page.goto(f"{live_server.url}/admin/ui")
    assert page.url == f"{live_server.url}/admin/ui/login"
