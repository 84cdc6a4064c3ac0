"""The operators' page in a real browser (issue 19, must show 1 and 2).

Headless Debian chromium driven by Playwright (`make test` installs both; Playwright never
downloads a browser here): sign in, see a known tenant and a completed request with its
thumbnail, grant credits and watch the ledger move, sign out; a wrong token and a tenant key
are refused. Every request the page makes goes to the test server, so it works offline.

With RELIGHT_UI_SCREENSHOTS=DIR the test also saves a screenshot of each view there (the
README's come from `RELIGHT_UI_SCREENSHOTS=docs`).
"""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Browser, expect
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.core.config import Settings
from relight.nodes.breaker import CircuitBreaker
from relight.nodes.registry import NodeInfo, publish_heartbeat
from relight.nodes.slots import acquire_least_loaded
from tests.conftest import MakeTenant, RunWorker
from tests.helpers import balance_of, fast_body
from tests.ui.conftest import ADMIN_TOKEN, LiveServer, Watched, shot

pytestmark = pytest.mark.slow


async def some_gpu_nodes(redis: Redis, settings: Settings) -> None:
    """Two nodes beating in the page's namespace, one with a slot taken, one whose breaker is
    open: what the real node heartbeat, a worker's slot and its breaker write."""
    namespace = settings.gpu_namespace
    busy = NodeInfo(
        id="gpu-a:9000", url="http://gpu-a:9000", capacity=2, engine="iclight",
        model="iclight_sd15_fc", device="cuda", in_flight=1, version="0.1.0",
    )  # fmt: skip
    failing = NodeInfo(
        id="gpu-b:9000", url="http://gpu-b:9000", capacity=1, engine="iclight",
        model="iclight_sd15_fc", device="cuda", version="0.1.0",
    )  # fmt: skip
    for node in (busy, failing):
        await publish_heartbeat(redis, namespace, node, ttl_s=60)
    assert await acquire_least_loaded(redis, namespace, [busy], ttl_s=60) is not None
    breaker = CircuitBreaker(redis, namespace, failures=settings.gpu_breaker_failures)
    for _ in range(settings.gpu_breaker_failures):
        await breaker.record_failure(failing.id)


async def test_an_operator_signs_in_looks_around_grants_credits_and_signs_out(
    live_server: LiveServer,
    browser: Browser,
    make_tenant: MakeTenant,
    run_worker: RunWorker,
    engine: AsyncEngine,
    redis: Redis,
    ui_settings: Settings,
) -> None:
    tenant = await make_tenant("acme", credits=1000)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as api:
        submitted = await api.post(
            "/v2/ic-light", headers=tenant.headers, json=fast_body(backend="local")
        )
        assert submitted.status_code == 202, submitted.text
        request_id = submitted.json()["request_id"]
        await run_worker()
        record = (await api.get(f"/v2/requests/{request_id}", headers=tenant.headers)).json()
    assert record["status"] == "COMPLETED"
    await some_gpu_nodes(redis, ui_settings)

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    watched = Watched(await context.new_page())
    page = watched.page
    base = live_server.url

    # Not signed in: the page sends the browser to the form.
    await page.goto(f"{base}/admin/ui")
    assert page.url == f"{base}/admin/ui/login"
    await shot(page, "login")
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("#sign-in")
    await expect(page.locator("h1")).to_have_text("Overview")
    await expect(page.locator('[data-metric="day.succeeded"]')).to_have_text("1")
    cookies = await context.cookies()
    session = next(cookie for cookie in cookies if cookie["name"] == "relight_admin_session")
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    await shot(page, "overview")

    # The tenant is listed; the completed request shows with its thumbnail.
    await page.click("nav >> text=Tenants")
    await expect(page.locator("#tenants")).to_contain_text("acme")
    await shot(page, "tenants")
    await page.click("nav >> text=Requests")
    await expect(page.locator("#requests")).to_contain_text(request_id)
    await page.select_option("select[name=status]", "COMPLETED")
    await page.fill("input[name=tenant]", "acme")
    await page.click("form.filters button")
    await expect(page.locator("#requests tbody tr")).to_have_count(1)
    await shot(page, "requests")
    await page.click(f"text={request_id}")
    await expect(page.locator("#request-status")).to_have_text("COMPLETED")
    thumbnail = page.locator("img.output").first
    await expect(thumbnail).to_be_visible()
    assert await thumbnail.evaluate("image => image.complete && image.naturalWidth") == 256
    await shot(page, "request")

    await page.click("nav >> text=GPU nodes")
    await expect(page.locator("#nodes")).to_contain_text("gpu-a:9000")
    await expect(page.locator("#nodes tr", has_text="gpu-a:9000")).to_contain_text("1 / 2")
    await expect(page.locator("#nodes tr", has_text="gpu-b:9000")).to_contain_text("open")
    await shot(page, "nodes")

    # A grant moves the balance and adds a ledger line.
    await page.goto(f"{base}/admin/ui/tenants/acme")
    before = int(await page.locator("#balance").inner_text())
    await page.fill("#grant input[name=amount]", "250")
    await page.fill("#grant input[name=reason]", "browser test grant")
    await page.click("#grant button")
    # The page asks first, naming the amount, then says what it did.
    await expect(page.locator("#confirm-question")).to_contain_text("Grant 250 credits to")
    await page.click("#confirm")
    await expect(page.locator("#flash")).to_have_text(
        f"Granted 250 credits to acme; balance now {before + 250:,}."
    )
    await expect(page.locator("#balance")).to_have_text(str(before + 250))
    first_entry = page.locator("#ledger tbody tr").first
    await expect(first_entry).to_contain_text("browser test grant")
    await expect(first_entry).to_contain_text("+250")
    assert await balance_of(engine, tenant.tenant_id) == before + 250
    await shot(page, "tenant")

    # Sign out: back to the form, and the views are closed again.
    await page.click("#logout")
    await expect(page.locator("h1")).to_have_text("Sign in")
    await page.goto(f"{base}/admin/ui/tenants")
    assert page.url == f"{base}/admin/ui/login"

    # Nothing came from anywhere but the test server, and the browser saw no error (a
    # Content-Security-Policy violation would be one).
    assert watched.urls
    outside = [url for url in watched.urls if not url.startswith(f"{base}/")]
    assert outside == []
    assert watched.console_errors == []
    await context.close()


async def test_a_wrong_token_and_a_tenant_key_are_refused_in_the_browser(
    live_server: LiveServer, browser: Browser, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("acme")
    context = await browser.new_context()
    page = await context.new_page()
    for token in ["not-the-token", tenant.key]:
        await page.goto(f"{live_server.url}/admin/ui/login")
        await page.fill("#token", token)
        await page.click("#sign-in")
        await expect(page.locator("#login-error")).to_have_text("That is not the admin token.")
        await page.goto(f"{live_server.url}/admin/ui/tenants")
        assert page.url == f"{live_server.url}/admin/ui/login"
    assert [c for c in await context.cookies() if c["name"] == "relight_admin_session"] == []
    # A tenant key sent as the API takes it opens no view either.
    await context.set_extra_http_headers({"x-api-key": tenant.key})
    await page.goto(f"{live_server.url}/admin/ui")
    assert page.url == f"{live_server.url}/admin/ui/login"
    await context.close()
