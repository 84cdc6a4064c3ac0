"""The operators' page with the admin token set, reached in-process or over real HTTP."""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from relight.config import Settings
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
