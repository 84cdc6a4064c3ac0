"""CORS for browser front-ends: off by default, configured origins (or `*`) on the public API,
never credentials with `*`, never on the admin API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
from pydantic import ValidationError

from api.app import create_app
from api.cors import NOT_CROSS_ORIGIN
from relight.core.config import Settings
from tests.conftest import TenantKey
from tests.helpers import fast_body

APP_ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "https://evil.example.net"
NEEDED_HEADERS = {"x-request-id", "ratelimit", "ratelimit-policy", "retry-after", "location"}

ClientFor = Callable[[str], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def client_for(settings: Settings, clean_state: None) -> ClientFor:
    """A client of an app whose RELIGHT_CORS_ORIGINS is the given value."""

    @asynccontextmanager
    async def make(origins: str) -> AsyncIterator[httpx.AsyncClient]:
        application = create_app(settings.model_copy(update={"cors_origins": origins}))
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://testserver"
            ) as client:
                yield client

    return make


def exposed(response: httpx.Response) -> set[str]:
    value = response.headers.get("access-control-expose-headers", "")
    return {name.strip().lower() for name in value.split(",") if name.strip()}


async def test_cors_is_off_by_default(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    response = await client.options(
        "/v2/ic-light",
        headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 405
    assert "access-control-allow-origin" not in response.headers
    answer = await client.get("/v2/requests", headers={**tenant.headers, "Origin": APP_ORIGIN})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


async def test_an_allowed_origin_gets_its_preflight_and_reads_the_headers_it_needs(
    client_for: ClientFor, tenant: TenantKey
) -> None:
    async with client_for(f"{APP_ORIGIN}, https://other.example.org") as client:
        response = await client.options(
            "/v2/ic-light",
            headers={
                "Origin": APP_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key, content-type, idempotency-key",
            },
        )
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "POST" in response.headers["access-control-allow-methods"]
        allowed = response.headers["access-control-allow-headers"].lower()
        for header in ("x-api-key", "content-type", "idempotency-key", "authorization"):
            assert header in allowed
        assert "access-control-allow-credentials" not in response.headers
        assert "Origin" in response.headers["vary"]

        submitted = await client.post(
            "/v2/ic-light",
            headers={**tenant.headers, "Origin": APP_ORIGIN},
            json=fast_body(),
        )
        assert submitted.status_code == 202, submitted.text
        assert submitted.headers["access-control-allow-origin"] == APP_ORIGIN
        assert NEEDED_HEADERS <= exposed(submitted)
        assert "access-control-allow-credentials" not in submitted.headers

        # Errors too: the page can read why it was refused.
        refused = await client.get("/v2/requests", headers={"Origin": APP_ORIGIN})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == APP_ORIGIN


async def test_every_public_route_answers_its_preflight(
    client_for: ClientFor, settings: Settings
) -> None:
    paths = create_app(settings).openapi()["paths"]
    public = {path: item for path, item in paths.items() if not path.startswith(NOT_CROSS_ORIGIN)}
    assert len(public) >= 12
    request_id = "00000000-0000-0000-0000-000000000000"
    async with client_for(APP_ORIGIN) as client:
        for template, operations in public.items():
            path = template.replace("{request_id}", request_id).replace("{index}", "0")
            for method in operations:
                response = await client.options(
                    path,
                    headers={
                        "Origin": APP_ORIGIN,
                        "Access-Control-Request-Method": method.upper(),
                        # Every request header a route of the public API reads.
                        "Access-Control-Request-Headers": (
                            "x-api-key, idempotency-key, prefer, cancel-after, last-event-id"
                        ),
                    },
                )
                assert response.status_code == 200, (method, template, response.text)
                assert response.headers["access-control-allow-origin"] == APP_ORIGIN


async def test_a_denied_origin_gets_no_cors_headers(
    client_for: ClientFor, tenant: TenantKey
) -> None:
    async with client_for(APP_ORIGIN) as client:
        response = await client.options(
            "/v2/ic-light",
            headers={"Origin": OTHER_ORIGIN, "Access-Control-Request-Method": "POST"},
        )
        assert response.status_code == 400
        assert "access-control-allow-origin" not in response.headers
        answer = await client.get(
            "/v2/requests", headers={**tenant.headers, "Origin": OTHER_ORIGIN}
        )
        assert answer.status_code == 200
        assert "access-control-allow-origin" not in answer.headers
        # A prefix of an allowed origin is another origin.
        sneaky = await client.options(
            "/v2/ic-light",
            headers={
                "Origin": APP_ORIGIN + ".evil.example.net",
                "Access-Control-Request-Method": "POST",
            },
        )
        assert sneaky.status_code == 400


async def test_any_origin_with_star_and_never_credentials(
    client_for: ClientFor, tenant: TenantKey
) -> None:
    async with client_for("*") as client:
        response = await client.options(
            "/v2/requests",
            headers={"Origin": OTHER_ORIGIN, "Access-Control-Request-Method": "GET"},
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
        answer = await client.get("/v2/requests", headers={**tenant.headers, "Origin": APP_ORIGIN})
        assert answer.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in answer.headers
        assert NEEDED_HEADERS <= exposed(answer)

    with pytest.raises(ValidationError, match="CORS_ALLOW_CREDENTIALS"):
        Settings(cors_origins="*", cors_allow_credentials=True)


async def test_the_admin_api_is_never_cross_origin(client_for: ClientFor) -> None:
    async with client_for("*") as client:
        for path in ("/admin/v1/tenants", "/admin/ui", "/metrics"):
            response = await client.options(
                path, headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET"}
            )
            assert "access-control-allow-origin" not in response.headers, path
            assert response.status_code in (401, 404, 405), (path, response.status_code)
