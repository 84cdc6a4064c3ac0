"""Tenant names that could pass for others (issue 28, break 9): a name in another script or in
fullwidth forms that looks like `alpha` is refused, by the admin API, `relight-admin` and the
service alike, and nothing is created; every answer of the operators' page says `nosniff`
and carries a Content-Security-Policy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from relight.core.config import Settings
from tests.cli_runner import admin_env, run_admin
from tests.conftest import MakeTenant
from tests.tenants.test_tenant_names import ACCEPTED
from tests.ui.conftest import sign_in

ADMIN_TOKEN = "z" * 32
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Refused on their own: mixed scripts, or not in NFKC.
MIXED_OR_COMPATIBILITY = [
    pytest.param("\u0430lpha", id="cyrillic-a-in-latin"),
    pytest.param("\uff41\uff4c\uff50\uff48\uff41", id="fullwidth"),
    pytest.param("alpha\u0430", id="latin-then-cyrillic"),
    pytest.param("a\u0308lpha", id="decomposed"),
    pytest.param("alpha\u0663", id="arabic-indic-digit"),
    pytest.param("\u03b1lpha", id="greek-alpha-in-latin"),
]
# Refused next to an existing `alpha`: each alone is a fine name, but looks like it.
LOOKALIKES = [
    pytest.param("\u0430\u04cf\u0440\u04bb\u0430", id="all-cyrillic"),
    pytest.param("ALPHA", id="upper-case"),
    pytest.param("aIpha", id="capital-i-for-l"),
    pytest.param("a1pha", id="digit-one-for-l"),
]


@pytest.fixture
async def admin_client(settings: Settings, clean_state: None) -> AsyncIterator[httpx.AsyncClient]:
    application: FastAPI = create_app(settings.model_copy(update={"admin_token": ADMIN_TOKEN}))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def tenant_names(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list(await connection.scalars(text("select name from tenant order by name")))


@pytest.mark.parametrize("name", MIXED_OR_COMPATIBILITY)
async def test_a_mixed_script_or_compatibility_name_is_a_422(
    admin_client: httpx.AsyncClient, engine: AsyncEngine, name: str
) -> None:
    response = await admin_client.post("/admin/v1/tenants", headers=ADMIN, json={"name": name})

    assert response.status_code == 422, response.text
    assert response.json()["field"] == "name"
    assert await tenant_names(engine) == []


@pytest.mark.parametrize("name", LOOKALIKES)
async def test_a_name_that_looks_like_an_existing_one_is_refused(
    admin_client: httpx.AsyncClient, make_tenant: MakeTenant, engine: AsyncEngine, name: str
) -> None:
    await make_tenant("alpha")

    response = await admin_client.post("/admin/v1/tenants", headers=ADMIN, json={"name": name})

    assert response.status_code == 409, response.text
    assert response.json()["code"] == "tenant_exists"
    assert "'alpha'" in response.json()["error"]
    assert await tenant_names(engine) == ["alpha"]


async def test_what_the_rules_allowed_is_still_allowed_side_by_side(
    admin_client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    for name in [*ACCEPTED, "\u0430\u04cf\u0440\u04bb\u0430", "東京タワー", "beta"]:
        response = await admin_client.post("/admin/v1/tenants", headers=ADMIN, json={"name": name})
        assert response.status_code == 201, (name, response.text)


@pytest.mark.slow
async def test_relight_admin_refuses_a_lookalike(
    settings: Settings, make_tenant: MakeTenant, engine: AsyncEngine, tmp_path: Path
) -> None:
    await make_tenant("alpha")
    env = {**admin_env(), "RELIGHT_DATABASE_URL": settings.database_url}

    mixed = await run_admin("tenant", "create", "\u0430lpha", env=env, cwd=tmp_path)
    lookalike = await run_admin("tenant", "create", "ALPHA", env=env, cwd=tmp_path)

    assert mixed.error()["code"] == "validation_error"
    assert mixed.error()["error"].startswith("name: must not mix scripts")
    assert lookalike.error()["code"] == "tenant_exists"
    assert await tenant_names(engine) == ["alpha"]


async def test_every_answer_of_the_operators_page_says_nosniff_and_has_a_policy(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    await make_tenant("alpha")
    signed_out = [await ui_client.get(path) for path in ["/admin/ui", "/admin/ui/login"]]
    await sign_in(ui_client)
    paths = [
        "/admin/ui",
        "/admin/ui/requests",
        "/admin/ui/tenants",
        "/admin/ui/tenants/alpha",
        "/admin/ui/tenants/nobody",
        "/admin/ui/nodes",
        "/admin/ui/static/ui.js",
        "/admin/ui/static/ui.css",
        "/admin/ui/static/missing.js",
    ]
    answers = [*signed_out, *[await ui_client.get(path) for path in paths]]
    for answer in answers:
        assert answer.headers.get("x-content-type-options") == "nosniff", answer.url
        policy = answer.headers.get("content-security-policy", "")
        assert "default-src" in policy, answer.url
        assert "unsafe-inline" not in policy, answer.url
