"""A key's label, scopes and expiry change after its creation (`PATCH /v2/keys/{id}` and the
admin API's `PATCH /admin/v1/keys/{key}`), validated as at creation, shown by `GET /v2/keys`, and
obeyed at once by every API process's auth cache."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.tenants.scopes import ALL_SCOPES, DEFAULT_SCOPES
from tests.api.test_auth_cache import AT_ONCE_S, LONG_TTL_S, api_process, status_within
from tests.api.test_keys import ADMIN_TOKEN, assert_lacks_scope, assert_refused, key_for
from tests.conftest import MakeTenant, TenantKey
from tests.helpers import assert_no_server_errors, small_body


@pytest.fixture(autouse=True)
def no_server_errors(client: httpx.AsyncClient) -> Iterator[None]:
    with assert_no_server_errors(client):
        yield


async def listed(client: httpx.AsyncClient, manager: TenantKey) -> dict[str, dict[str, Any]]:
    """`GET /v2/keys` by label."""
    response = await client.get("/v2/keys", headers=manager.headers)
    assert response.status_code == 200, response.text
    return {key["label"]: key for key in response.json()["data"]}


def key_id(keys: dict[str, dict[str, Any]], tenant: TenantKey) -> str:
    return str(next(key["id"] for key in keys.values() if key["prefix"] in tenant.key))


async def test_a_manager_changes_a_keys_label_scopes_and_expiry_as_the_list_shows(
    client: httpx.AsyncClient, tenant: TenantKey, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    manager = await key_for(sessionmaker, tenant, list(ALL_SCOPES), label="manager")
    target = key_id(await listed(client, manager), tenant)

    response = await client.patch(
        f"/v2/keys/{target}",
        headers=manager.headers,
        json={"label": "dashboard", "scopes": ["account:read", "requests:read"], "expires_in": 600},
    )

    assert response.status_code == 200, response.text
    keys = await listed(client, manager)
    assert response.json() == keys["dashboard"]
    assert keys["dashboard"]["scopes"] == ["requests:read", "account:read"]
    expires_at = datetime.fromisoformat(keys["dashboard"]["expires_at"])
    assert datetime.now(UTC) < expires_at < datetime.now(UTC) + timedelta(minutes=11)
    assert_lacks_scope(
        await client.post("/v2/ic-light", headers=tenant.headers, json=small_body()),
        "relight:submit",
    )
    assert (await client.get("/v2/account", headers=tenant.headers)).status_code == 200

    # Only what is given changes; `expires_at: null` removes the expiry.
    unexpired = await client.patch(
        f"/v2/keys/{target}", headers=manager.headers, json={"expires_at": None}
    )
    assert unexpired.status_code == 200, unexpired.text
    after = (await listed(client, manager))["dashboard"]
    assert after["expires_at"] is None
    assert after["scopes"] == ["requests:read", "account:read"]
    relabelled = await client.patch(
        f"/v2/keys/{target}", headers=manager.headers, json={"label": "board"}
    )
    assert relabelled.status_code == 200, relabelled.text
    assert (await listed(client, manager))["board"] == {**after, "label": "board"}


@pytest.mark.parametrize(
    ("body", "field", "named"),
    [
        ({"scopes": ["requests:read", "requests:write"]}, "scopes", "requests:write"),
        ({"scopes": []}, "scopes", "at least one"),
        ({"scopes": None}, "scopes", "at least one"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at", "past"),
        ({"expires_at": "2099-01-01T00:00:00"}, "expires_at", "time zone"),
        ({"expires_in": 3600, "expires_at": None}, "expires_in", "not both"),
        ({"expires_in": 5}, "expires_in", "60"),
        ({"secret": "mine"}, "secret", "secret"),
        ({}, "body", "at least one"),
    ],
)
async def test_a_bad_key_update_is_a_422_naming_the_problem_and_changes_nothing(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessionmaker: async_sessionmaker[AsyncSession],
    body: dict[str, Any],
    field: str,
    named: str,
) -> None:
    manager = await key_for(sessionmaker, tenant, list(ALL_SCOPES), label="manager")
    before = await listed(client, manager)

    response = await client.patch(
        f"/v2/keys/{key_id(before, tenant)}", headers=manager.headers, json=body
    )

    payload = assert_refused(response, 422, "validation_error")
    assert payload["field"] == field, payload
    assert named in payload["error"], payload
    after = await listed(client, manager)
    assert after["test"] == before["test"]


async def test_a_manager_adds_only_scopes_it_holds_and_a_key_narrows_but_never_widens_itself(
    client: httpx.AsyncClient, tenant: TenantKey, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    manager = await key_for(sessionmaker, tenant, ["keys:manage", "requests:read"], label="manager")
    reader = await key_for(sessionmaker, tenant, ["requests:read"], label="reader")
    keys = await listed(client, manager)

    # Adding a scope the manager lacks, to another key or to itself, is refused.
    for target in (keys["reader"]["id"], keys["manager"]["id"]):
        refused = await client.patch(
            f"/v2/keys/{target}",
            headers=manager.headers,
            json={"scopes": ["requests:read", "relight:submit"]},
        )
        payload = assert_refused(refused, 403, "insufficient_scope")
        assert payload["required_scope"] == "relight:submit"
        assert "cannot grant" in payload["error"]
    # Narrowing a broader key is allowed (it keeps a scope it held; the manager grants none).
    narrowed = await client.patch(
        f"/v2/keys/{keys['test']['id']}",
        headers=manager.headers,
        json={"scopes": ["relight:submit", "requests:read"]},
    )
    assert narrowed.status_code == 200, narrowed.text
    # ... but lengthening its life is not: the manager could not have granted that key.
    longer = await client.patch(
        f"/v2/keys/{keys['test']['id']}", headers=manager.headers, json={"expires_in": 600}
    )
    assert longer.status_code == 200, longer.text  # from never to 10 minutes: shorter
    refused = await client.patch(
        f"/v2/keys/{keys['test']['id']}", headers=manager.headers, json={"expires_at": None}
    )
    assert_refused(refused, 403, "insufficient_scope")

    # A key narrows itself, then cannot take back what it gave up.
    itself = await client.patch(
        f"/v2/keys/{keys['manager']['id']}",
        headers=manager.headers,
        json={"scopes": ["keys:manage"]},
    )
    assert itself.status_code == 200, itself.text
    again = await client.patch(
        f"/v2/keys/{keys['manager']['id']}",
        headers=manager.headers,
        json={"scopes": ["keys:manage", "requests:read"]},
    )
    assert_refused(again, 403, "insufficient_scope")

    after = await listed(client, manager)
    assert after["reader"]["scopes"] == ["requests:read"]
    assert after["test"]["scopes"] == ["relight:submit", "requests:read"]
    assert after["test"]["expires_at"] is not None
    assert after["manager"]["scopes"] == ["keys:manage"]
    assert (await client.get("/v2/requests", headers=reader.headers)).status_code == 200
    assert_lacks_scope(await client.get("/v2/requests", headers=manager.headers), "requests:read")


async def test_another_tenants_or_an_unknown_key_is_a_404_and_a_revoked_one_a_409(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    acme, globex = await make_tenant("acme"), await make_tenant("globex")
    acme_manager = await key_for(sessionmaker, acme, list(ALL_SCOPES), label="manager")
    globex_manager = await key_for(sessionmaker, globex, list(ALL_SCOPES), label="manager")
    acme_keys = await listed(client, acme_manager)

    for target in [key["id"] for key in acme_keys.values()] + [str(uuid.uuid4())]:
        response = await client.patch(
            f"/v2/keys/{target}", headers=globex_manager.headers, json={"label": "mine"}
        )
        assert_refused(response, 404, "key_not_found")
    assert await listed(client, acme_manager) == acme_keys

    target = acme_keys["test"]["id"]
    revoked = await client.delete(f"/v2/keys/{target}", headers=acme_manager.headers)
    assert revoked.status_code == 200, revoked.text
    response = await client.patch(
        f"/v2/keys/{target}", headers=acme_manager.headers, json={"label": "back"}
    )
    assert_refused(response, 409, "key_revoked")
    assert (await listed(client, acme_manager))["test"]["revoked_at"] is not None


async def test_a_cached_key_narrowed_by_patch_is_refused_at_once_by_every_api_process(
    settings: Settings, tenant: TenantKey, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    manager = await key_for(sessionmaker, tenant, list(ALL_SCOPES), label="manager")
    async with (
        api_process(settings, auth_cache_s=LONG_TTL_S) as first,
        api_process(settings, auth_cache_s=LONG_TTL_S) as second,
    ):
        for api in (first, second):
            submitted = await api.post("/v2/ic-light", headers=tenant.headers, json=small_body())
            assert submitted.status_code == 202, submitted.text  # cached in both, for 300 s
        keys = (await first.get("/v2/keys", headers=manager.headers)).json()["data"]
        own = next(key for key in keys if key["prefix"] in tenant.key)

        narrowed = await first.patch(
            f"/v2/keys/{own['id']}", headers=manager.headers, json={"scopes": ["requests:read"]}
        )
        assert narrowed.status_code == 200, narrowed.text

        # The process that made the change forgets the key with the commit; the other on NOTIFY.
        again = await first.post("/v2/ic-light", headers=tenant.headers, json=small_body())
        assert_lacks_scope(again, "relight:submit")

        async def submit_status() -> int:
            response = await second.post("/v2/ic-light", headers=tenant.headers, json=small_body())
            return response.status_code

        took = await status_within(AT_ONCE_S, 403, submit_status)
        assert_lacks_scope(
            await second.post("/v2/ic-light", headers=tenant.headers, json=small_body()),
            "relight:submit",
        )
    assert took < AT_ONCE_S < LONG_TTL_S


async def test_the_admin_api_changes_any_key_by_id_or_prefix_granting_any_scope(
    settings: Settings, tenant: TenantKey
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with api_process(settings, admin_token=ADMIN_TOKEN) as api:
        keys = (await api.get(f"/admin/v1/tenants/{tenant.name}/keys", headers=admin)).json()
        own = keys[0]
        assert own["scopes"] == list(DEFAULT_SCOPES)  # no keys:manage: that is granted below

        by_id = await api.patch(
            f"/admin/v1/keys/{own['id']}",
            headers=admin,
            json={"scopes": list(ALL_SCOPES), "label": "ops"},
        )
        assert by_id.status_code == 200, by_id.text
        assert (by_id.json()["label"], by_id.json()["name"]) == ("ops", "ops")
        assert (await api.get("/v2/keys", headers=tenant.headers)).status_code == 200

        by_prefix = await api.patch(
            f"/admin/v1/keys/{own['prefix']}", headers=admin, json={"expires_in": 600}
        )
        assert by_prefix.status_code == 200, by_prefix.text
        listed_now = (await api.get(f"/admin/v1/tenants/{tenant.name}/keys", headers=admin)).json()
        assert listed_now == [by_prefix.json()]
        assert listed_now[0]["scopes"] == list(ALL_SCOPES)
        assert listed_now[0]["expires_at"] is not None

        unknown = await api.patch("/admin/v1/keys/000000000000", headers=admin, json={"label": "x"})
        assert_refused(unknown, 404, "key_not_found")
        bad = await api.patch(f"/admin/v1/keys/{own['id']}", headers=admin, json={"scopes": ["x"]})
        assert_refused(bad, 422, "validation_error")


async def test_the_key_update_is_a_typed_patch_in_the_openapi_document(app: FastAPI) -> None:
    document = app.openapi()
    for path in ("/v2/keys/{key_id}", "/admin/v1/keys/{key}"):
        body = document["paths"][path]["patch"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["$ref"].endswith("/KeyUpdate"), (path, body)
    fields = document["components"]["schemas"]["KeyUpdate"]["properties"]
    assert set(fields) == {"label", "scopes", "expires_at", "expires_in"}
