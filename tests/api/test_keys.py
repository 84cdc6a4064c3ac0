"""Scoped, expiring API keys (issue 26): a key does only what its scopes allow (403
`insufficient_scope` naming the missing one), stops at its expiry (401 `key_expired`), and a
tenant manages its own keys with `/v2/keys` (list, create with the secret shown once, revoke),
never reaching another tenant's keys nor granting scopes its own key lacks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.tenants.scopes import ALL_SCOPES, DEFAULT_SCOPES
from relight.tenants.service import create_api_key, find_tenant
from tests.api.test_auth_cache import AT_ONCE_S, LONG_TTL_S, api_process, status_within
from tests.conftest import MakeTenant, TenantKey
from tests.helpers import assert_no_server_errors, balance_of, job_count, small_body, submit
from tests.waiting import wait_until

ADMIN_TOKEN = "k" * 32


@pytest.fixture(autouse=True)
def no_server_errors(client: httpx.AsyncClient) -> Iterator[None]:
    with assert_no_server_errors(client):
        yield


async def key_for(
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant: TenantKey,
    scopes: list[str] | None,
    expires_at: datetime | None = None,
    label: str = "extra",
) -> TenantKey:
    """Another key of `tenant`'s, made the way `relight-admin key create` makes it."""
    async with sessionmaker() as session, session.begin():
        owner = await find_tenant(session, tenant.name)
        created = await create_api_key(session, owner, label, scopes=scopes, expires_at=expires_at)
    return TenantKey(tenant_id=tenant.tenant_id, name=tenant.name, key=created.key)


def assert_refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    payload: dict[str, Any] = response.json()
    assert payload["code"] == code, payload
    assert payload["request_id"]
    return payload


def assert_lacks_scope(response: httpx.Response, scope: str) -> None:
    payload = assert_refused(response, 403, "insufficient_scope")
    assert scope in payload["error"], payload
    assert payload["required_scope"] == scope


# --- scopes ---------------------------------------------------------------------------------


async def test_a_requests_read_key_cannot_submit_but_can_read(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessionmaker: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
) -> None:
    reader = await key_for(sessionmaker, tenant, ["requests:read"])
    balance = await balance_of(engine, tenant.tenant_id)

    for route in ("/v2/ic-light", "/v1/ic-light"):
        refused = await client.post(route, headers=reader.headers, json=small_body())
        assert_lacks_scope(refused, "relight:submit")
    assert await job_count(engine) == 0
    assert await balance_of(engine, tenant.tenant_id) == balance

    request_id = await submit(client, tenant, small_body())
    for path in (
        f"/v2/requests/{request_id}",
        f"/v2/requests/{request_id}/status",
        f"/v2/requests/{request_id}/webhooks",
        "/v2/requests",
    ):
        read = await client.get(path, headers=reader.headers)
        assert read.status_code == 200, (path, read.text)
    assert (await client.get("/v2/requests", headers=reader.headers)).json()["data"][0][
        "request_id"
    ] == request_id

    cancel = await client.post(f"/v2/requests/{request_id}/cancel", headers=reader.headers)
    assert_lacks_scope(cancel, "requests:cancel")
    assert_lacks_scope(await client.get("/v2/account", headers=reader.headers), "account:read")
    assert_lacks_scope(
        await client.get("/v1/get-user-credits", headers=reader.headers), "account:read"
    )
    assert_lacks_scope(
        await client.get("/v2/webhooks/secret", headers=reader.headers), "webhooks:manage"
    )
    assert_lacks_scope(await client.get("/v2/keys", headers=reader.headers), "keys:manage")


async def test_a_submit_only_key_submits_but_reads_nothing(
    client: httpx.AsyncClient, tenant: TenantKey, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    submitter = await key_for(sessionmaker, tenant, ["relight:submit"])

    request_id = await submit(client, submitter, small_body())

    status = await client.get(f"/v2/requests/{request_id}/status", headers=submitter.headers)
    assert_lacks_scope(status, "requests:read")
    output = await client.get(f"/v2/requests/{request_id}/outputs/0", headers=submitter.headers)
    assert_lacks_scope(output, "requests:read")


async def test_a_new_key_holds_every_scope_but_keys_manage(
    client: httpx.AsyncClient, tenant: TenantKey, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    # `tenant`'s key was made without naming scopes.
    assert_lacks_scope(await client.get("/v2/keys", headers=tenant.headers), "keys:manage")
    manager = await key_for(sessionmaker, tenant, list(ALL_SCOPES))

    listed = (await client.get("/v2/keys", headers=manager.headers)).json()["data"]

    assert [key["scopes"] for key in listed] == [list(DEFAULT_SCOPES), list(ALL_SCOPES)]


# --- expiry ---------------------------------------------------------------------------------


async def test_an_expired_key_is_a_401_naming_its_expiry(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessionmaker: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
) -> None:
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    expiring = await key_for(sessionmaker, tenant, None, tomorrow, label="expiring")
    assert (await client.get("/v2/requests", headers=expiring.headers)).status_code == 200
    async with engine.begin() as connection:  # a day later
        await connection.execute(
            text(
                "UPDATE api_key SET expires_at = now() - interval '1 second'"
                " WHERE name = 'expiring'"
            )
        )

    for response in (
        await client.get("/v2/requests", headers=expiring.headers),
        await client.post("/v2/ic-light", headers=expiring.headers, json=small_body()),
    ):
        payload = assert_refused(response, 401, "key_expired")
        assert "expired" in payload["error"], payload
    assert await job_count(engine) == 0


async def test_a_cached_key_stops_at_its_expiry_not_at_the_caches(
    settings: Settings, tenant: TenantKey, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=2)
    expiring = await key_for(sessionmaker, tenant, None, soon)
    async with api_process(settings, auth_cache_s=LONG_TTL_S) as api:
        first = await api.post("/v2/ic-light", headers=expiring.headers, json=small_body())
        assert first.status_code == 202, first.text  # the key is cached now, for 300 s

        async def refused() -> bool:
            response = await api.post("/v2/ic-light", headers=expiring.headers, json=small_body())
            return response.status_code == 401 and response.json()["code"] == "key_expired"

        await wait_until(refused, timeout_s=AT_ONCE_S, what="the cached key's expiry")
    assert datetime.now(UTC) >= soon


# --- /v2/keys -------------------------------------------------------------------------------


async def test_a_tenant_creates_lists_and_revokes_its_own_keys(
    client: httpx.AsyncClient, tenant: TenantKey, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    manager = await key_for(sessionmaker, tenant, list(ALL_SCOPES))

    created = await client.post(
        "/v2/keys",
        headers=manager.headers,
        json={
            "label": "dashboard",
            "scopes": ["requests:read", "account:read"],
            "expires_in": 3600,
        },
    )

    assert created.status_code == 201, created.text
    new = created.json()
    assert new["key"].startswith(f"rl_{new['prefix']}_")
    assert new["label"] == "dashboard"
    assert new["scopes"] == ["requests:read", "account:read"]
    expires_at = datetime.fromisoformat(new["expires_at"])
    assert timedelta(minutes=50) < expires_at - datetime.fromisoformat(new["created_at"])
    assert new["revoked_at"] is None
    fresh = TenantKey(tenant_id=tenant.tenant_id, name=tenant.name, key=new["key"])
    assert (await client.get("/v2/account", headers=fresh.headers)).status_code == 200
    assert_lacks_scope(
        await client.post("/v2/ic-light", headers=fresh.headers, json=small_body()),
        "relight:submit",
    )

    listed = (await client.get("/v2/keys", headers=manager.headers)).json()["data"]
    assert [key["label"] for key in listed] == ["test", "extra", "dashboard"]
    assert set(listed[2]) == {
        "id",
        "prefix",
        "label",
        "scopes",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    }
    assert listed[2]["last_used_at"] is not None  # it read the account just now
    assert all(new["key"] not in str(key) for key in listed)

    revoked = await client.delete(f"/v2/keys/{new['id']}", headers=manager.headers)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    refused = await client.get("/v2/account", headers=fresh.headers)
    assert_refused(refused, 401, "unauthorized")
    assert "revoked" in refused.json()["error"]


async def test_another_tenants_key_is_a_404_and_stays_valid(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    acme, globex = await make_tenant("acme"), await make_tenant("globex")
    acme_manager = await key_for(sessionmaker, acme, list(ALL_SCOPES))
    globex_manager = await key_for(sessionmaker, globex, list(ALL_SCOPES))
    acme_keys = (await client.get("/v2/keys", headers=acme_manager.headers)).json()["data"]

    for key in acme_keys:
        response = await client.delete(f"/v2/keys/{key['id']}", headers=globex_manager.headers)
        assert_refused(response, 404, "key_not_found")
    unknown = await client.delete(f"/v2/keys/{uuid.uuid4()}", headers=globex_manager.headers)
    assert_refused(unknown, 404, "key_not_found")

    globex_sees = (await client.get("/v2/keys", headers=globex_manager.headers)).json()["data"]
    assert {key["id"] for key in globex_sees}.isdisjoint({key["id"] for key in acme_keys})
    assert (await client.get("/v2/requests", headers=acme.headers)).status_code == 200


async def test_a_key_cannot_grant_a_scope_it_does_not_hold(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    manager = await key_for(sessionmaker, tenant, ["keys:manage", "requests:read"])

    for scopes in (["relight:submit"], ["requests:read", "account:read"], None):
        response = await client.post("/v2/keys", headers=manager.headers, json={"scopes": scopes})
        payload = assert_refused(response, 403, "insufficient_scope")
        assert "cannot grant" in payload["error"]
    allowed = await client.post(
        "/v2/keys", headers=manager.headers, json={"scopes": ["requests:read"]}
    )
    assert allowed.status_code == 201, allowed.text

    listed = (await client.get("/v2/keys", headers=manager.headers)).json()["data"]
    assert len(listed) == 3  # the tenant's own, the manager, the one allowed


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scopes": ["requests:write"]}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"expires_in": 3600, "expires_at": "2099-01-01T00:00:00Z"}, "expires_in"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "2099-01-01T00:00:00"}, "expires_at"),
        ({"expires_in": 5}, "expires_in"),
        ({"secret": "mine"}, "secret"),
    ],
)
async def test_a_bad_key_request_is_a_422_naming_the_field(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessionmaker: async_sessionmaker[AsyncSession],
    body: dict[str, Any],
    field: str,
) -> None:
    manager = await key_for(sessionmaker, tenant, list(ALL_SCOPES))

    response = await client.post("/v2/keys", headers=manager.headers, json=body)

    payload = assert_refused(response, 422, "validation_error")
    assert payload["field"] == field, payload
    assert len((await client.get("/v2/keys", headers=manager.headers)).json()["data"]) == 2


async def test_a_key_revoked_through_v2_keys_is_refused_promptly_by_every_cache(
    settings: Settings, tenant: TenantKey, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    manager = await key_for(sessionmaker, tenant, list(ALL_SCOPES))
    async with (
        api_process(settings, auth_cache_s=LONG_TTL_S) as first,
        api_process(settings, auth_cache_s=LONG_TTL_S) as second,
    ):
        for api in (first, second):
            submitted = await api.post("/v2/ic-light", headers=tenant.headers, json=small_body())
            assert submitted.status_code == 202, submitted.text  # cached in both
        keys = (await first.get("/v2/keys", headers=manager.headers)).json()["data"]
        own = next(key for key in keys if key["prefix"] in tenant.key)

        revoked = await first.delete(f"/v2/keys/{own['id']}", headers=manager.headers)
        assert revoked.status_code == 200, revoked.text

        # The process that revoked it forgets it with the commit; the other on NOTIFY.
        again = await first.post("/v2/ic-light", headers=tenant.headers, json=small_body())
        assert again.status_code == 401, again.text

        async def submit_status() -> int:
            response = await second.post("/v2/ic-light", headers=tenant.headers, json=small_body())
            return response.status_code

        took = await status_within(AT_ONCE_S, 401, submit_status)
    assert took < AT_ONCE_S < LONG_TTL_S


async def test_the_admin_api_creates_a_key_with_scopes_expiry_and_label(
    settings: Settings, tenant: TenantKey
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with api_process(settings, admin_token=ADMIN_TOKEN) as api:
        response = await api.post(
            f"/admin/v1/tenants/{tenant.name}/keys",
            headers=admin,
            json={"label": "ops", "scopes": ["account:read"], "expires_in": 600},
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert (created["label"], created["name"]) == ("ops", "ops")
        assert created["scopes"] == ["account:read"]
        assert created["expires_at"] is not None
        headers = {"x-api-key": created["key"]}
        assert (await api.get("/v2/account", headers=headers)).status_code == 200
        assert_lacks_scope(await api.get("/v2/requests", headers=headers), "requests:read")

        unknown = await api.post(
            f"/admin/v1/tenants/{tenant.name}/keys", headers=admin, json={"scopes": ["root"]}
        )
        assert_refused(unknown, 422, "validation_error")
        listed = (await api.get(f"/admin/v1/tenants/{tenant.name}/keys", headers=admin)).json()
        assert [key["scopes"] for key in listed] == [list(DEFAULT_SCOPES), ["account:read"]]


async def test_key_routes_answer_the_rate_limit_headers_like_every_authenticated_route(
    client: httpx.AsyncClient, tenant: TenantKey, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    manager = await key_for(sessionmaker, tenant, list(ALL_SCOPES))

    listed = await client.get("/v2/keys", headers=manager.headers)

    assert listed.status_code == 200
    assert "RateLimit" in listed.headers
    assert "RateLimit-Policy" in listed.headers
