"""Tenant names (issue 15, item 5): one rule, shared by the admin API and `relight-admin`.

`{tenant}` in routes and commands takes a name or an id, so a name must never read as an id
(a UUID in any spelling), nor as a path; control characters, spaces and over-long names are
refused alike, as a 422 (API) or a clean JSON error (CLI), and nothing is created.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from relight.core.config import Settings
from tests.cli_runner import Result, admin_env, run_admin
from tests.conftest import MakeTenant

ADMIN_TOKEN = "z" * 32
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
AN_ID = uuid.UUID("0190f3a2-7c4e-7d1a-9b2c-3d4e5f6a7b8c")
REFUSED = [
    pytest.param(str(AN_ID), id="uuid"),
    pytest.param(AN_ID.hex, id="uuid-hex"),
    pytest.param(str(AN_ID).upper(), id="uuid-upper"),
    pytest.param(AN_ID.hex[:8] + "-" + AN_ID.hex[8:], id="uuid-odd-hyphens"),
    pytest.param(f"{{{AN_ID}}}", id="uuid-braces"),
    pytest.param(f"urn:uuid:{AN_ID}", id="uuid-urn"),
    pytest.param("../../x y", id="path-with-space"),
    pytest.param("..", id="dot-dot"),
    pytest.param(".", id="dot"),
    pytest.param("a/b", id="slash"),
    pytest.param("tab\there", id="tab"),
    pytest.param("bell\x07", id="control"),
    pytest.param("new\nline", id="newline"),
    pytest.param("trailing-newline\n", id="trailing-newline"),
    pytest.param("del\x7f", id="del"),
    pytest.param("", id="empty"),
    pytest.param("x" * 201, id="201-characters"),
    pytest.param("x" * 5000, id="5000-characters"),
]
ACCEPTED = ["acme", "acme.eu-1", "ops@acme", "Ünïcode_name", "x" * 200, "0190f3a2"]


# --- the admin API ---------------------------------------------------------------------------


@pytest.fixture
async def admin_client(settings: Settings, clean_state: None) -> AsyncIterator[httpx.AsyncClient]:
    application: FastAPI = create_app(settings.model_copy(update={"admin_token": ADMIN_TOKEN}))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def tenant_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("select count(*) from tenant")) or 0)


@pytest.mark.parametrize("name", REFUSED)
async def test_the_admin_api_refuses_the_name_with_a_422(
    admin_client: httpx.AsyncClient, engine: AsyncEngine, name: str
) -> None:
    response = await admin_client.post("/admin/v1/tenants", headers=ADMIN, json={"name": name})

    assert response.status_code == 422, response.text
    assert response.json()["field"] == "name"
    assert await tenant_count(engine) == 0


@pytest.mark.parametrize("name", ACCEPTED)
async def test_the_admin_api_accepts_the_name(admin_client: httpx.AsyncClient, name: str) -> None:
    response = await admin_client.post("/admin/v1/tenants", headers=ADMIN, json={"name": name})

    assert response.status_code == 201, response.text
    assert response.json()["name"] == name


async def test_a_name_can_never_shadow_another_tenants_id(
    admin_client: httpx.AsyncClient, engine: AsyncEngine, make_tenant: MakeTenant
) -> None:
    victim = await make_tenant("victim", credits=100)
    refused = await admin_client.post(
        "/admin/v1/tenants", headers=ADMIN, json={"name": str(victim.tenant_id)}
    )
    assert refused.status_code == 422, refused.text
    # Had a row been named so before the rule (written here behind the API's back), the id
    # still wins: routes, grants and keys reach the tenant the id belongs to.
    async with engine.begin() as connection:
        await connection.execute(
            text("insert into tenant (id, name) values (:id, :name)"),
            {"id": uuid.uuid4(), "name": str(victim.tenant_id)},
        )

    shown = await admin_client.get(f"/admin/v1/tenants/{victim.tenant_id}", headers=ADMIN)
    granted = await admin_client.post(
        f"/admin/v1/tenants/{victim.tenant_id}/credits",
        headers=ADMIN,
        json={"amount": 5, "reason": "goes to the id's owner"},
    )

    assert shown.status_code == 200, shown.text
    assert shown.json()["name"] == "victim"
    assert granted.status_code == 201, granted.text
    assert granted.json()["balance_after"] == 105


# --- relight-admin -----------------------------------------------------------------------------


async def cli(settings: Settings, tmp_path: Path, *args: str) -> Result:
    env = {**admin_env(), "RELIGHT_DATABASE_URL": settings.database_url}
    return await run_admin(*args, env=env, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(str(AN_ID), id="uuid"),
        pytest.param(AN_ID.hex, id="uuid-hex"),
        pytest.param("../../x y", id="path-with-space"),
        pytest.param("..", id="dot-dot"),
        pytest.param("bell\x07", id="control"),
        pytest.param("new\nline", id="newline"),
        pytest.param("x" * 5000, id="5000-characters"),
    ],
)
async def test_relight_admin_refuses_the_name_with_the_same_rule(
    settings: Settings, clean_state: None, engine: AsyncEngine, tmp_path: Path, name: str
) -> None:
    result = await cli(settings, tmp_path, "tenant", "create", name)

    error = result.error()
    assert error["code"] == "validation_error", error
    assert error["error"].startswith("name: "), error
    assert "select" not in error["error"].lower()  # no SQL, however long the name
    assert len(error["error"]) < 200
    assert await tenant_count(engine) == 0


@pytest.mark.slow
async def test_relight_admin_accepts_what_the_api_accepts(
    settings: Settings, clean_state: None, tmp_path: Path
) -> None:
    result = await cli(settings, tmp_path, "tenant", "create", "acme.eu-1")

    assert result.json()["name"] == "acme.eu-1"
