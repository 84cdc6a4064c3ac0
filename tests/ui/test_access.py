"""Who opens the operators' page, and how its actions are guarded (issue 19).

Only the admin token signs in; the session lives in a signed, HttpOnly, SameSite=Strict
cookie; every action needs the CSRF token of a page of that session; signing out ends the
session even for a copy of its cookie; the page is off while RELIGHT_ADMIN_TOKEN is unset.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from api.ui.session import COOKIE_NAME
from tests.conftest import MakeTenant
from tests.helpers import balance_of, fast_body
from tests.ui.conftest import ADMIN_TOKEN, sign_in

VIEWS = ["/admin/ui", "/admin/ui/requests", "/admin/ui/nodes", "/admin/ui/tenants"]


async def test_the_page_is_off_while_no_admin_token_is_set(client: httpx.AsyncClient) -> None:
    for path in [*VIEWS, "/admin/ui/login"]:
        response = await client.get(path)
        assert response.status_code == 403, path
        assert "RELIGHT_ADMIN_TOKEN" in response.text
    refused = await client.post("/admin/ui/login", data={"token": ADMIN_TOKEN})
    assert refused.status_code == 403
    assert COOKIE_NAME not in refused.cookies


async def test_without_a_session_every_view_sends_the_browser_to_sign_in(
    ui_client: httpx.AsyncClient,
) -> None:
    for path in [*VIEWS, f"/admin/ui/requests/{uuid.uuid4()}", "/admin/ui/tenants/acme"]:
        response = await ui_client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/admin/ui/login"
    login = await ui_client.get("/admin/ui/login")
    assert login.status_code == 200
    assert 'name="token"' in login.text


async def test_a_wrong_token_or_a_tenant_key_does_not_sign_in(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("acme")
    for token in ["", "wrong", ADMIN_TOKEN[:-1], tenant.key]:
        response = await ui_client.post("/admin/ui/login", data={"token": token})
        assert response.status_code == 401, token
        assert "not the admin token" in response.text
        assert COOKIE_NAME not in response.cookies
    # Nor does a tenant key sent the way the API takes it.
    for headers in [tenant.headers, {"Authorization": f"Bearer {tenant.key}"}]:
        response = await ui_client.get("/admin/ui/tenants", headers=headers)
        assert response.status_code == 303
    # The admin token as a bearer header is the admin API's way, not the page's.
    bearer = await ui_client.get("/admin/ui", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert bearer.status_code == 303


async def test_the_session_cookie_is_http_only_strict_and_signed(
    ui_client: httpx.AsyncClient,
) -> None:
    response = await ui_client.post("/admin/ui/login", data={"token": ADMIN_TOKEN})
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/ui"
    set_cookie = response.headers["set-cookie"].lower()
    assert "httponly" in set_cookie
    assert "samesite=strict" in set_cookie
    assert "path=/admin/ui" in set_cookie
    cookie = response.cookies[COOKIE_NAME]
    assert ADMIN_TOKEN not in cookie
    overview = await ui_client.get("/admin/ui")
    assert overview.status_code == 200
    assert "default-src 'self'" in overview.headers["content-security-policy"]
    # Any change to the cookie voids it.
    issued, nonce, signature = cookie.split(".")
    # The last hex digit changed (to one it is not: a signature may end in 0 already).
    other_digit = "1" if signature.endswith("0") else "0"
    for forged in [
        f"{int(issued) + 1}.{nonce}.{signature}",
        f"{issued}.{nonce}x.{signature}",
        f"{issued}.{nonce}.{signature[:-1]}{other_digit}",
        "garbage",
    ]:
        ui_client.cookies.set(COOKIE_NAME, forged, path="/admin/ui")
        assert (await ui_client.get("/admin/ui")).status_code == 303, forged


async def test_an_action_needs_the_csrf_token_of_its_session(
    ui_client: httpx.AsyncClient,
    ui_app: object,
    make_tenant: MakeTenant,
    engine: AsyncEngine,
) -> None:
    tenant = await make_tenant("acme", credits=100)
    csrf = await sign_in(ui_client)
    grant = {"amount": "50", "reason": "support ticket 7", "kind": "grant"}
    # Another operator's session has a token of its own, which does not fit this session.
    transport = httpx.ASGITransport(app=ui_app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
        other_csrf = await sign_in(other)
    assert other_csrf != csrf
    for token in [None, "", "0" * 64, other_csrf]:
        data = grant if token is None else {**grant, "csrf_token": token}
        response = await ui_client.post("/admin/ui/tenants/acme/credits", data=data)
        assert response.status_code == 403, token
        assert await balance_of(engine, tenant.tenant_id) == 100
    # With this session's token: a confirmation first, then the grant.
    response = await ui_client.post(
        "/admin/ui/tenants/acme/credits", data={**grant, "csrf_token": csrf, "confirm": "yes"}
    )
    assert response.status_code == 303
    assert response.headers["location"].startswith("/admin/ui/tenants/acme?flash=")
    assert await balance_of(engine, tenant.tenant_id) == 150
    page = await ui_client.get("/admin/ui/tenants/acme")
    assert "support ticket 7" in page.text


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"amount": "", "reason": "x"}, 422, "amount"),
        ({"amount": "ten", "reason": "x"}, 422, "amount"),
        ({"amount": "10", "reason": ""}, 422, "reason"),
        ({"amount": "-10", "reason": "x", "kind": "grant"}, 422, "grant"),
        ({"amount": "10", "reason": "x", "kind": "gift"}, 422, "kind"),
        ({"amount": "-1000", "reason": "x", "kind": "adjust"}, 422, "negative"),
    ],
)
async def test_a_bad_grant_shows_why_and_moves_nothing(
    ui_client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    engine: AsyncEngine,
    form: dict[str, str],
    status: int,
    message: str,
) -> None:
    tenant = await make_tenant("acme", credits=100)
    csrf = await sign_in(ui_client)
    response = await ui_client.post(
        "/admin/ui/tenants/acme/credits", data={**form, "csrf_token": csrf}
    )
    assert response.status_code == status, response.text
    assert 'id="action-error"' in response.text
    assert message in response.text.lower()
    assert await balance_of(engine, tenant.tenant_id) == 100


async def test_suspend_and_resume_act_like_the_admin_api(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("acme")
    csrf = await sign_in(ui_client)
    confirmed = {"csrf_token": csrf, "confirm": "yes"}
    suspended = await ui_client.post("/admin/ui/tenants/acme/suspend", data=confirmed)
    assert suspended.status_code == 303
    refused = await ui_client.post("/v2/ic-light", headers=tenant.headers, json=fast_body())
    assert refused.status_code == 403
    resumed = await ui_client.post("/admin/ui/tenants/acme/resume", data=confirmed)
    assert resumed.status_code == 303
    accepted = await ui_client.post("/v2/ic-light", headers=tenant.headers, json=fast_body())
    assert accepted.status_code == 202


async def test_unknown_things_are_404_pages_not_errors(ui_client: httpx.AsyncClient) -> None:
    csrf = await sign_in(ui_client)
    for path in [f"/admin/ui/requests/{uuid.uuid4()}", "/admin/ui/tenants/nobody"]:
        response = await ui_client.get(path)
        assert response.status_code == 404, path
        assert "text/html" in response.headers["content-type"]
    unknown = await ui_client.post("/admin/ui/tenants/nobody/suspend", data={"csrf_token": csrf})
    assert unknown.status_code == 404
    # A malformed id is a bad request, shown as a page (the API's JSON 422 before issue 27).
    malformed = await ui_client.get("/admin/ui/requests/not-a-uuid")
    assert malformed.status_code == 400
    assert "text/html" in malformed.headers["content-type"]


async def test_signing_out_ends_the_session_for_every_copy_of_its_cookie(
    ui_client: httpx.AsyncClient,
) -> None:
    csrf = await sign_in(ui_client)
    copied = ui_client.cookies[COOKIE_NAME]
    response = await ui_client.post("/admin/ui/logout", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/ui/login"
    assert (await ui_client.get("/admin/ui")).status_code == 303
    ui_client.cookies.set(COOKIE_NAME, copied, path="/admin/ui")
    assert (await ui_client.get("/admin/ui")).status_code == 303
