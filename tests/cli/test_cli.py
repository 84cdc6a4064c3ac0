"""`relight-admin`, run as the real installed console script against the test database."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from relight.core.config import Settings
from relight.tenants.keys import format_key
from tests.cli_runner import ADMIN, Result, admin_env, run_admin
from tests.conftest import database_url
from tests.weights import mirrored_weight

pytestmark = pytest.mark.slow

Admin = Callable[..., Awaitable[Result]]


@pytest.fixture
def admin(settings: Settings, clean_state: None, tmp_path: Path) -> Admin:
    """Runs `relight-admin ARGS…` against the (migrated, emptied) test database, and the test
    run's Redis and queue."""
    env = {
        **admin_env(),
        "RELIGHT_REDIS_URL": settings.redis_url,
        "RELIGHT_QUEUE_NAME": settings.queue_name,
    }

    async def run(*args: str, database_url: str = settings.database_url) -> Result:
        # cwd: no stray .env file
        return await run_admin(
            *args, env={**env, "RELIGHT_DATABASE_URL": database_url}, cwd=tmp_path
        )

    return run


async def test_the_console_script_is_installed() -> None:
    assert ADMIN.is_file()
    assert os.access(ADMIN, os.X_OK)


async def test_tenant_create_then_duplicate_then_list(admin: Admin) -> None:
    created = (await admin("tenant", "create", "globex", "--credits", "50")).json()
    assert created["name"] == "globex"
    assert created["credit_balance"] == 50
    assert created["status"] == "active"
    assert created["id"]

    duplicate = await admin("tenant", "create", "globex", "--credits", "5")
    error = duplicate.error()
    assert error["code"] == "tenant_exists"
    assert "globex" in error["error"]

    listed = (await admin("tenant", "list")).json()
    assert [(tenant["name"], tenant["credit_balance"]) for tenant in listed] == [("globex", 50)]
    assert listed[0]["id"] == created["id"]


async def test_a_weight_set_with_the_cli_is_shown_and_reaches_the_workers(
    admin: Admin, redis: Redis, settings: Settings
) -> None:
    created = (await admin("tenant", "create", "globex", "--weight", "4")).json()
    assert created["weight"] == 4
    assert await mirrored_weight(redis, settings.queue_name, created["id"]) == b"4"

    updated = (await admin("tenant", "set-weight", "globex", "2")).json()
    assert updated["weight"] == 2
    assert [tenant["weight"] for tenant in (await admin("tenant", "list")).json()] == [2]
    assert await mirrored_weight(redis, settings.queue_name, created["id"]) == b"2"

    for bad in ("0", "101", "heavy"):
        assert (await admin("tenant", "set-weight", "globex", bad)).code != 0
    assert (await admin("tenant", "create", "initech", "--weight", "0")).code != 0
    listed = (await admin("tenant", "list")).json()
    assert [(tenant["name"], tenant["weight"]) for tenant in listed] == [("globex", 2)]
    assert await mirrored_weight(redis, settings.queue_name, created["id"]) == b"2"


async def test_tenant_set_lanes_allows_the_high_lane(admin: Admin) -> None:
    created = (await admin("tenant", "create", "globex")).json()
    assert created["allowed_lanes"] == ["normal", "low"]

    updated = (await admin("tenant", "set-lanes", "globex", "low,high,normal")).json()

    assert updated["allowed_lanes"] == ["high", "normal", "low"]
    refused = await admin("tenant", "set-lanes", "globex", "urgent")
    assert refused.error()["code"] == "validation_error"
    assert "urgent" in refused.error()["error"]
    listed = (await admin("tenant", "list")).json()
    assert listed[0]["allowed_lanes"] == ["high", "normal", "low"]


async def test_negative_credits_are_refused(admin: Admin) -> None:
    result = await admin("tenant", "create", "initech", "--credits", "-1")
    assert result.code != 0
    assert (await admin("tenant", "list")).json() == []


async def test_a_created_key_authenticates_until_revoked(
    admin: Admin, client: httpx.AsyncClient
) -> None:
    tenant = (await admin("tenant", "create", "umbrella", "--credits", "50")).json()

    created = (await admin("key", "create", "umbrella", "--name", "ci")).json()
    key = created["key"]
    assert key.startswith(f"rl_{created['prefix']}_")
    assert created["tenant"] == "umbrella"
    assert created["tenant_id"] == tenant["id"]
    assert created["name"] == "ci"
    assert created["revoked_at"] is None

    allowed = await client.get("/v2/requests", headers={"x-api-key": key})
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["data"] == []

    revoked = (await admin("key", "revoke", key)).json()
    assert revoked["prefix"] == created["prefix"]
    assert revoked["revoked_at"] is not None
    assert "key" not in revoked

    refused = await client.get("/v2/requests", headers={"x-api-key": key})
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthorized"

    # Revoking twice is harmless and keeps the first revocation time.
    again = (await admin("key", "revoke", created["prefix"])).json()
    assert again["revoked_at"] == revoked["revoked_at"]


async def test_a_key_can_be_created_by_tenant_id(admin: Admin, client: httpx.AsyncClient) -> None:
    tenant = (await admin("tenant", "create", "hooli")).json()
    assert tenant["credit_balance"] == 0

    created = (await admin("key", "create", tenant["id"])).json()
    assert created["tenant"] == "hooli"
    response = await client.get("/v2/requests", headers={"x-api-key": created["key"]})
    assert response.status_code == 200


async def test_unknown_tenant_and_unknown_key_fail_cleanly(admin: Admin) -> None:
    error = (await admin("key", "create", "unknown-tenant")).error()
    assert error["code"] == "tenant_not_found"
    assert "unknown-tenant" in error["error"]

    missing = (await admin("key", "revoke", format_key("000000000000", "a" * 43))).error()
    assert "000000000000" in missing["error"]


async def test_an_unreachable_database_is_a_clean_json_error(admin: Admin) -> None:
    """The CLI promises JSON for every outcome; a wrong database URL is an everyday mistake."""
    missing = database_url("relight_no_such_database")

    result = await admin("tenant", "list", database_url=missing)

    assert result.code == 1
    lines = result.stderr.strip().splitlines() or [""]
    is_json_error = result.stderr.lstrip().startswith("{") and len(lines) == 1
    assert is_json_error, (
        f"stderr is {len(lines)} lines, not a JSON error; it ends with {lines[-1]!r}"
    )
    error = result.error()
    assert "relight_no_such_database" in error["error"]
