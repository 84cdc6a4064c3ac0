"""Postgres away: submit and reads answer 503 with a clear error, readiness says so."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_app
from relight.core.config import Settings
from relight.tenants.keys import format_key
from scripts.stack import free_port

WELL_FORMED_KEY = format_key("0123456789ab", "a" * 43)


@pytest.fixture
async def client_without_database(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    # Nothing listens on this port: every connection is refused, as when Postgres is down.
    down = settings.model_copy(
        update={"database_url": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none"}
    )
    app = create_app(down)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_submit_is_a_503_not_a_500(client_without_database: httpx.AsyncClient) -> None:
    response = await client_without_database.post(
        "/v2/ic-light",
        headers={"x-api-key": WELL_FORMED_KEY},
        json={"prompt": "cat", "subject_image": "https://example.com/cat.png"},
    )
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert response.headers["retry-after"] == "2"


async def test_reads_are_a_503(client_without_database: httpx.AsyncClient) -> None:
    response = await client_without_database.get(
        "/v2/requests", headers={"x-api-key": WELL_FORMED_KEY}
    )
    assert response.status_code == 503


async def test_readiness_names_the_database(client_without_database: httpx.AsyncClient) -> None:
    response = await client_without_database.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"].startswith("unavailable")
    assert body["checks"]["redis"] == "ok"
    assert (await client_without_database.get("/healthz")).status_code == 200
