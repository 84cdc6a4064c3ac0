"""`/openapi.json` is a valid OpenAPI 3.1 document (openapi-spec-validator), as the app serves
it; and the documentation pages load nothing from another origin."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from api.app import create_app
from relight.core.config import Settings


@pytest.fixture
async def docs_client(settings: Settings) -> Any:
    # No lifespan: the documents need neither Postgres nor Redis.
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def test_the_served_document_is_valid_openapi_3_1(docs_client: httpx.AsyncClient) -> None:
    response = await docs_client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.1.")
    try:
        validate(spec)
    except OpenAPIValidationError as error:
        pytest.fail(f"{error.message} at {'/'.join(map(str, error.absolute_path))}")


async def test_the_status_stream_describes_one_event_in_3_1_terms(
    docs_client: httpx.AsyncClient,
) -> None:
    spec = (await docs_client.get("/openapi.json")).json()
    stream = spec["paths"]["/v2/requests/{request_id}/status/stream"]["get"]
    response = stream["responses"]["200"]
    # No `itemSchema` (OpenAPI 3.2): the `schema` of a 3.1 event stream is one event's.
    assert set(response["content"]["text/event-stream"]) == {"schema"}
    event = response["content"]["text/event-stream"]["schema"]
    names = {variant["properties"]["event"]["const"] for variant in event["oneOf"]}
    assert names == {"status", "done"}
    assert "Server-Sent Events" in response["description"]


# What a browser would fetch from another origin: in HTML an absolute `src=`/`href=`, in a
# script an element built with an absolute `src` (React's `src:"https://…"`, `.src = "…"`), in a
# stylesheet an absolute `url(…)` or `@import`.
FOREIGN_IN_HTML = re.compile(r"""\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)
FOREIGN_IN_SCRIPT = re.compile(r"""\bsrc\s*[:=]\s*["'`](?:https?:)?//""")
FOREIGN_IN_STYLE = re.compile(r"""(?:url\(\s*["']?|@import\s+["'])(?:https?:)?//""", re.I)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_documentation_pages_load_only_same_origin_assets(
    docs_client: httpx.AsyncClient, page: str
) -> None:
    response = await docs_client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not FOREIGN_IN_HTML.search(html), html
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert any(asset.endswith(".js") for asset in assets), assets
    for asset in assets:
        assert asset.startswith("/"), asset
        fetched = await docs_client.get(asset)
        assert fetched.status_code == 200, asset
        # What the scripts and styles fetch in turn (ReDoc's bundle shows a logo).
        if asset.endswith((".js", ".css")):
            pattern = FOREIGN_IN_SCRIPT if asset.endswith(".js") else FOREIGN_IN_STYLE
            found = pattern.search(fetched.text)
            assert found is None, f"{asset} loads {fetched.text[found.start() : found.end() + 60]}"
