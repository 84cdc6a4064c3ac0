"""`stream_url`: a signed, expiring link to a request's status stream that opens without an API
key, so a browser page can follow a request with `new EventSource(stream_url)`.

Against the app served by uvicorn on 127.0.0.1 with a real worker; the browser test drives
headless Chromium (Playwright, /usr/bin/chromium, nothing downloaded) on a page served from
another origin that `RELIGHT_CORS_ORIGINS` allows."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest
from httpx_sse import aconnect_sse
from playwright.async_api import async_playwright

from api.app import create_app
from relight.core.config import Settings
from relight.core.storage.urls import sign, stream_scope
from tests.api.test_status_stream import read_until_done, relight_events
from tests.conftest import MakeTenant, TenantKey
from tests.fakes.segmind import background_worker
from tests.fakes.server import ThreadedServer
from tests.hardening.live import serve
from tests.helpers import fast_body
from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS

PER_TENANT = 2

PAGE = b"""<!doctype html>
<meta charset="utf-8"><title>stream</title>
<script>
window.streamResult = new Promise((resolve) => {
  const seen = [];
  const source = new EventSource(new URLSearchParams(location.search).get("stream"));
  source.addEventListener("status", (event) => seen.push(JSON.parse(event.data).status));
  source.addEventListener("done", (event) => {
    source.close();
    resolve({done: JSON.parse(event.data).status, seen});
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) resolve({done: null, seen, readyState: 2});
  };
});
</script>
"""


class PageServer(ThreadedServer):
    """Serves `PAGE` at every path: the front-end of another origin."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(PAGE)))
                self.end_headers()
                self.wfile.write(PAGE)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._listen(Handler)


@pytest.fixture
def page_server() -> Iterator[PageServer]:
    with PageServer() as server:
        yield server


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail("chromium is missing: run `make chromium` (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
def stream_settings(settings: Settings, page_server: PageServer) -> Settings:
    return settings.model_copy(
        update={
            "cors_origins": f"http://127.0.0.1:{page_server.port}",
            "max_streams_per_tenant": PER_TENANT,
            "status_stream_ping_s": 0.5,
        }
    )


@pytest.fixture
async def api(stream_settings: Settings, clean_state: None) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve(create_app(stream_settings)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        yield client


async def accepted(api: httpx.AsyncClient, tenant: TenantKey) -> dict[str, str]:
    response = await api.post("/v2/ic-light", headers=tenant.headers, json=fast_body())
    assert response.status_code == 202, response.text
    body: dict[str, str] = response.json()
    return body


def with_query(url: str, expires: int, signature: str) -> str:
    return f"{urlsplit(url).path}?expires={expires}&signature={signature}"


async def test_the_202_body_record_and_status_carry_a_stream_url_that_opens_without_a_key(
    api: httpx.AsyncClient, tenant: TenantKey, stream_settings: Settings
) -> None:
    body = await accepted(api, tenant)
    request_id = body["request_id"]
    record = (await api.get(f"/v2/requests/{request_id}", headers=tenant.headers)).json()
    status = (await api.get(f"/v2/requests/{request_id}/status", headers=tenant.headers)).json()
    for url in (body["stream_url"], record["stream_url"], status["stream_url"]):
        assert urlsplit(url).path == f"/v2/requests/{request_id}/status/stream"
    async with background_worker(stream_settings):
        # No API key: the signed URL alone opens the stream.
        async with aconnect_sse(api, "GET", body["stream_url"]) as source:
            assert source.response.status_code == 200
            events = await read_until_done(relight_events(source))
    assert json.loads(events[-1].data)["status"] == "COMPLETED"


async def test_a_wrong_or_expired_stream_signature_is_a_401_naming_it(
    api: httpx.AsyncClient, make_tenant: MakeTenant, stream_settings: Settings
) -> None:
    tenant = await make_tenant("streams")
    first = await accepted(api, tenant)
    second = await accepted(api, tenant)
    good = urlsplit(first["stream_url"])
    expires = good.query.split("&")[0].split("=")[1]
    tampered = f"{good.path}?expires={expires}&signature={'0' * 64}"
    # A signature opens its own request's stream only, and only as a stream.
    other_request = good.path.replace(first["request_id"], second["request_id"]) + "?" + good.query
    output_path = f"/v2/requests/{first['request_id']}/outputs/0?{good.query}"
    past = sign(
        stream_settings.secret_key,
        stream_scope(uuid.UUID(first["request_id"])),
        60,
        now=time.time() - 3600,
    )
    expired = with_query(first["stream_url"], *past)
    for url, code in [
        (tampered, "invalid_signature"),
        (other_request, "invalid_signature"),
        (output_path, "invalid_signature"),
        (expired, "signature_expired"),
    ]:
        response = await api.get(url)
        assert response.status_code == 401, (url, response.text)
        assert response.json()["code"] == code, url


async def test_signed_streams_count_against_the_tenants_stream_limit(
    api: httpx.AsyncClient, tenant: TenantKey
) -> None:
    # No worker: the requests stay queued and their streams stay open.
    urls = [(await accepted(api, tenant))["stream_url"] for _ in range(PER_TENANT + 1)]
    async with (
        aconnect_sse(api, "GET", urls[0]) as first,
        aconnect_sse(api, "GET", urls[1], headers=tenant.headers) as second,
    ):
        assert first.response.status_code == second.response.status_code == 200
        refused = await api.get(urls[2])
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "too_many_streams"


@pytest.mark.slow
async def test_a_browser_page_follows_a_request_with_event_source_of_its_stream_url(
    api: httpx.AsyncClient,
    tenant: TenantKey,
    stream_settings: Settings,
    page_server: PageServer,
    chromium: Path,
) -> None:
    body = await accepted(api, tenant)
    stream_url = body["stream_url"]
    allowed_page = f"http://127.0.0.1:{page_server.port}/?stream={quote(stream_url, safe='')}"
    # The same page from an origin RELIGHT_CORS_ORIGINS does not name.
    other_page = f"http://localhost:{page_server.port}/?stream={quote(stream_url, safe='')}"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page()
            async with background_worker(stream_settings):
                await page.goto(allowed_page)
                result = await page.evaluate("window.streamResult")
            assert result["done"] == "COMPLETED", result
            assert result["seen"][-1] == "COMPLETED"

            # Finished requests answer their final events on every connection, so the only
            # thing that differs below is the page's origin: the browser withholds the stream.
            page = await browser.new_page()
            await page.goto(other_page)
            refused = await page.evaluate("window.streamResult")
            assert refused == {"done": None, "seen": [], "readyState": 2}
        finally:
            await browser.close()
