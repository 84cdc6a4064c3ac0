"""The operators' page answers every error with a page a person can read and leave (issue 27):
a malformed URL, a bad parameter, an unknown id or route, a crash; the API keeps its JSON."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import TenantKey
from tests.ui.conftest import ADMIN_TOKEN, sign_in


def assert_error_page(response: httpx.Response, status: int, *shown: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert '<h1 id="error-heading">' in response.text
    assert 'href="/admin/ui/requests" id="back"' in response.text
    for text in shown:
        assert text in response.text, text


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/admin/ui/requests/not-a-uuid", "request_id: "),
        ("/admin/ui/requests/1234", "request_id: "),
        ("/admin/ui/requests?status=DONE", "status &#39;DONE&#39; is not one of QUEUED"),
        ("/admin/ui/requests?backend=quantum", "backend &#39;quantum&#39; is not one of"),
        ("/admin/ui/requests?side=sideways", "side &#39;sideways&#39; is not one of"),
        ("/admin/ui/requests?after=yesterday", "is not a page boundary this page made"),
        ("/admin/ui/webhooks?before=2026-01-01_nope", "is not a page boundary this page made"),
        ("/admin/ui/requests?q=no+id+here", "holds no request id"),
    ],
)
async def test_a_malformed_url_or_parameter_is_a_400_page_naming_it(
    ui_client: httpx.AsyncClient, path: str, shown: str
) -> None:
    await sign_in(ui_client)
    assert_error_page(await ui_client.get(path), 400, "Bad request", shown)


async def test_an_unknown_request_or_route_is_a_404_page(ui_client: httpx.AsyncClient) -> None:
    await sign_in(ui_client)
    missing = uuid.uuid4()
    assert_error_page(
        await ui_client.get(f"/admin/ui/requests/{missing}"), 404, f"There is no request {missing}"
    )
    assert_error_page(
        await ui_client.get("/admin/ui/requests", params={"q": str(missing)}),
        404,
        f"There is no request {missing}",
    )
    assert_error_page(
        await ui_client.get("/admin/ui/no-such-view"),
        404,
        "There is no page at /admin/ui/no-such-view.",
    )
    assert_error_page(await ui_client.delete("/admin/ui/requests"), 405, "Not allowed")


@pytest.fixture
async def crashing_client(ui_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app with one page route and one API route that crash (the server must
    answer them, not the test client raise)."""

    async def crash() -> None:
        raise RuntimeError("a bug")

    ui_app.add_api_route("/admin/ui/crash", crash)
    ui_app.add_api_route("/v2/crash", crash)
    transport = httpx.ASGITransport(app=ui_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def test_a_crash_under_the_page_is_a_500_page_with_a_reference_and_json_on_the_api(
    crashing_client: httpx.AsyncClient,
) -> None:
    page = await crashing_client.get("/admin/ui/crash")
    assert_error_page(page, 500, "Something went wrong", "internal server error")
    assert page.headers["x-request-id"] in page.text
    api = await crashing_client.get("/v2/crash")
    assert api.status_code == 500
    assert api.json()["code"] == "internal_error"


async def test_the_public_and_admin_apis_keep_their_json_errors(
    ui_client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await sign_in(ui_client)  # a session cookie changes nothing outside the page
    malformed = await ui_client.get("/v2/requests/not-a-uuid", headers=tenant.headers)
    assert malformed.status_code == 422
    assert malformed.json()["code"] == "validation_error"
    unknown = await ui_client.get(f"/v2/requests/{uuid.uuid4()}", headers=tenant.headers)
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "not_found"
    route = await ui_client.get("/v2/no-such-route")
    assert route.status_code == 404
    assert route.json()["code"] == "not_found"
    admin = await ui_client.get(
        "/admin/tenants/nobody", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert admin.status_code == 404
    assert admin.headers["content-type"].startswith("application/json")
