"""The operators' page with the admin token set, reached in-process or over real HTTP."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from playwright.async_api import Browser, Page, async_playwright

from api.app import create_app
from relight.core.config import Settings
from scripts.stack import free_port

ADMIN_TOKEN = "operator-token-" + "z" * 24


@pytest.fixture
def ui_settings(settings: Settings) -> Settings:
    """The test settings with the page on; GPU node keys under this run's queue name, so the
    run's cleanup removes them."""
    return settings.model_copy(
        update={"admin_token": ADMIN_TOKEN, "gpu_namespace": f"{settings.queue_name}:gpu"}
    )


@pytest.fixture
async def ui_app(ui_settings: Settings, clean_state: None) -> AsyncIterator[FastAPI]:
    application = create_app(ui_settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def ui_client(ui_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=ui_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def sign_in(client: httpx.AsyncClient, token: str = ADMIN_TOKEN) -> str:
    """Sign `client` in (its cookie jar keeps the session); answers the pages' CSRF token."""
    response = await client.post("/admin/ui/login", data={"token": token})
    assert response.status_code == 303, response.text
    page = await client.get("/admin/ui/tenants")
    assert page.status_code == 200, page.text
    match = CSRF.search(page.text)
    assert match is not None
    return match.group(1)


@dataclass(frozen=True)
class LiveServer:
    url: str


@pytest.fixture
def live_server(ui_settings: Settings, clean_state: None) -> Iterator[LiveServer]:
    """The api under uvicorn on a free port, in a thread with its own event loop, for a
    browser to reach."""
    port = free_port()
    config = uvicorn.Config(
        create_app(ui_settings),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        loop="asyncio",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="ui-live-server", daemon=True)
    thread.start()
    for _ in range(300):
        if server.started:
            break
        if not thread.is_alive():
            raise RuntimeError("the live server stopped while starting")
        threading.Event().wait(0.05)
    else:
        raise RuntimeError("the live server did not start")
    yield LiveServer(url=f"http://127.0.0.1:{port}")
    server.should_exit = True
    thread.join(timeout=15)


# The browser of the Playwright tests (test_browser*.py): headless Debian chromium, never a
# downloaded one.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = (
    Path(os.environ["RELIGHT_UI_SCREENSHOTS"]) if "RELIGHT_UI_SCREENSHOTS" in os.environ else None
)


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail("chromium is missing: run `make chromium` (apt-get install chromium)")
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        await launched.close()


class Watched:
    """A page, with every URL it requested and every console error it logged."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.urls: list[str] = []
        self.console_errors: list[str] = []
        page.on("request", lambda request: self.urls.append(request.url))
        page.on(
            "console",
            lambda message: (
                self.console_errors.append(message.text) if message.type == "error" else None
            ),
        )


async def shot(page: Page, name: str) -> None:
    if SCREENSHOTS is not None:
        await page.screenshot(path=str(SCREENSHOTS / f"admin-ui-{name}.png"), full_page=True)
