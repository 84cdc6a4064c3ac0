"""The admin API (issue 3, must show 5): the platform provisions tenants over REST.

Behind `Authorization: Bearer $RELIGHT_ADMIN_TOKEN` only; a tenant's key never opens it, the
admin token never opens a tenant route, and it is off (403) while the token is unset.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from relight.core.config import Settings
from relight.tenants.weight_mirror import tenant_weights_key
from tests.conftest import MakeTenant, RunWorker, TenantKey
from tests.helpers import FAST, balance_of, job_count
from tests.helpers import small_body as body
from tests.weights import mirrored_weight

ADMIN_TOKEN = "x" * 32
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# The routes the README documents.
ADMIN_PATHS = {
    "/admin/v1/tenants",
    "/admin/v1/tenants/{tenant}",
    "/admin/v1/tenants/{tenant}/suspend",
    "/admin/v1/tenants/{tenant}/resume",
    "/admin/v1/tenants/{tenant}/limits",
    "/admin/v1/tenants/{tenant}/weight",
    "/admin/v1/tenants/{tenant}/lanes",
    "/admin/v1/tenants/{tenant}/keys",
    "/admin/v1/keys/{prefix}/revoke",
    "/admin/v1/tenants/{tenant}/credits",
    "/admin/v1/tenants/{tenant}/ledger",
    "/admin/v1/tenants/{tenant}/usage",
}


@pytest.fixture
async def admin_app(settings: Settings, clean_state: None) -> AsyncIterator[FastAPI]:
    """The app with the admin API on (the `app` fixture's settings have no admin token)."""
    # Tests here present many wrong tokens from one address: the sign-in throttle (tested in
    # test_admin_signin_throttle.py) must not turn their 401s into 429s.
    application = create_app(
        settings.model_copy(
            update={"admin_token": ADMIN_TOKEN, "admin_signin_failures_per_minute": 1000}
        )
    )
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def admin_client(admin_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=admin_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code, response.text


# --- a tenant provisioned over REST ----------------------------------------------------------


async def test_a_tenant_created_keyed_and_funded_over_rest_can_submit(
    admin_client: httpx.AsyncClient, run_worker: RunWorker, engine: AsyncEngine
) -> None:
    client = admin_client
    tenant = await created(
        await client.post(
            "/admin/v1/tenants",
            headers=ADMIN,
            json={
                "name": "globex",
                "credits": 100,
                "limits": {"requests_per_minute": 600, "burst": 10, "max_in_flight": 5},
            },
        )
    )
    assert tenant["name"] == "globex"
    assert tenant["status"] == "active"
    assert tenant["credit_balance"] == 100
    assert tenant["limits"] == {"requests_per_minute": 600, "burst": 10, "max_in_flight": 5}
    tenant_id = tenant["id"]

    key = await created(
        await client.post("/admin/v1/tenants/globex/keys", headers=ADMIN, json={"name": "prod"})
    )
    assert key["key"].startswith(f"rl_{key['prefix']}_")
    assert key["tenant_id"] == tenant_id
    assert key["name"] == "prod"
    assert key["revoked_at"] is None
    keys = ok(await client.get(f"/admin/v1/tenants/{tenant_id}/keys", headers=ADMIN))
    assert [(each["prefix"], "key" in each) for each in keys] == [(key["prefix"], False)]
    tenant_headers = {"x-api-key": key["key"]}

    grant = await created(
        await client.post(
            "/admin/v1/tenants/globex/credits",
            headers=ADMIN,
            json={"amount": 50, "reason": "invoice 42"},
        )
    )
    assert (grant["kind"], grant["amount"], grant["balance_after"]) == ("grant", 50, 150)
    assert grant["reason"] == "invoice 42"
    assert grant["request_id"] is None

    # The ledger, one entry per page, newest first, until the cursor runs out.
    pages: list[list[dict[str, Any]]] = []
    params: dict[str, Any] = {"limit": 1}
    while True:
        page = ok(await client.get("/admin/v1/tenants/globex/ledger", headers=ADMIN, params=params))
        assert page["balance"] == 150
        pages.append(page["data"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
        assert len(pages) < 5, "the cursor never ran out"
    entries = [entry for page in pages for entry in page]
    assert [len(page) for page in pages] == [1, 1]
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in entries] == [
        ("grant", 50, 150),
        ("grant", 100, 100),
    ]

    limits = ok(
        await client.patch("/admin/v1/tenants/globex/limits", headers=ADMIN, json={"burst": 7})
    )
    assert limits["limits"] == {"requests_per_minute": 600, "burst": 7, "max_in_flight": 5}

    listed = ok(await client.get("/admin/v1/tenants", headers=ADMIN))
    assert [(each["id"], each["credit_balance"]) for each in listed] == [(tenant_id, 150)]
    assert ok(await client.get(f"/admin/v1/tenants/{tenant_id}", headers=ADMIN))["name"] == (
        "globex"
    )

    suspended = ok(await client.post("/admin/v1/tenants/globex/suspend", headers=ADMIN))
    assert suspended["status"] == "suspended"
    refused = await client.post("/v2/ic-light", headers=tenant_headers, json=body(**FAST))
    assert_error(refused, 403, "tenant_suspended")
    assert await job_count(engine) == 0
    assert await balance_of(engine, uuid.UUID(tenant_id)) == 150

    resumed = ok(await client.post(f"/admin/v1/tenants/{tenant_id}/resume", headers=ADMIN))
    assert resumed["status"] == "active"
    accepted = await client.post("/v2/ic-light", headers=tenant_headers, json=body(**FAST))
    assert accepted.status_code == 202, accepted.text
    # The limits set over REST are the ones applied.
    assert accepted.headers["RateLimit-Policy"] == '"tenant";q=7;w=1'
    request_id = accepted.json()["request_id"]
    cost = accepted.json()["credits_reserved"]

    await run_worker()

    record = ok(await client.get(f"/v2/requests/{request_id}", headers=tenant_headers))
    assert record["status"] == "COMPLETED"
    assert len(record["outputs"]) == 1
    ledger = ok(await client.get("/admin/v1/tenants/globex/ledger", headers=ADMIN))
    assert [entry["kind"] for entry in ledger["data"]] == ["charge", "reserve", "grant", "grant"]
    assert ledger["balance"] == 150 - cost == sum(entry["amount"] for entry in ledger["data"])
    assert ledger["data"][0]["request_id"] == request_id

    revoked = ok(await client.post(f"/admin/v1/keys/{key['prefix']}/revoke", headers=ADMIN))
    assert revoked["revoked_at"] is not None
    for path in ("/v2/requests", f"/v2/requests/{request_id}", "/v2/account"):
        assert_error(await client.get(path, headers=tenant_headers), 401, "unauthorized")
    assert_error(
        await client.post("/v2/ic-light", headers=tenant_headers, json=body(**FAST)),
        401,
        "unauthorized",
    )


# --- dispatch weight --------------------------------------------------------------------------


async def test_a_weight_set_over_rest_is_shown_and_reaches_the_workers(
    admin_client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    client = admin_client
    tenant = await created(
        await client.post(
            "/admin/v1/tenants", headers=ADMIN, json={"name": "globex", "credits": 100, "weight": 3}
        )
    )
    assert tenant["weight"] == 3
    assert await mirrored_weight(redis, settings.queue_name, tenant["id"]) == b"3"
    plain = await created(await client.post("/admin/v1/tenants", headers=ADMIN, json={"name": "x"}))
    assert plain["weight"] == 1

    path = "/admin/v1/tenants/globex/weight"
    assert ok(await client.put(path, headers=ADMIN, json={"weight": 5}))["weight"] == 5
    assert ok(await client.get("/admin/v1/tenants/globex", headers=ADMIN))["weight"] == 5
    assert await mirrored_weight(redis, settings.queue_name, tenant["id"]) == b"5"

    for bad in (0, 101, "heavy", None):
        response = await client.put(path, headers=ADMIN, json={"weight": bad})
        assert_error(response, 422, "validation_error")
        assert response.json()["field"] == "weight", response.text
    refused = await client.post("/admin/v1/tenants", headers=ADMIN, json={"name": "y", "weight": 0})
    assert_error(refused, 422, "validation_error")
    assert ok(await client.get("/admin/v1/tenants/globex", headers=ADMIN))["weight"] == 5
    assert await mirrored_weight(redis, settings.queue_name, tenant["id"]) == b"5"

    # Redis lost the mirror (a flush): the tenant's next submit writes it again.
    await redis.delete(tenant_weights_key(settings.queue_name))
    key = await created(await client.post("/admin/v1/tenants/globex/keys", headers=ADMIN, json={}))
    submitted = await client.post(
        "/v2/ic-light", headers={"x-api-key": key["key"]}, json=body(**FAST)
    )
    assert submitted.status_code == 202, submitted.text
    assert await mirrored_weight(redis, settings.queue_name, tenant["id"]) == b"5"


# --- who may call it -------------------------------------------------------------------------


async def test_a_wrong_or_missing_admin_token_is_a_401(
    admin_client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine
) -> None:
    wrong: dict[str, dict[str, str]] = {
        "missing": {},
        "wrong token": {"Authorization": "Bearer " + "y" * 32},
        "a prefix of it": {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
        "longer": {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        "no scheme": {"Authorization": ADMIN_TOKEN},
        "basic": {"Authorization": f"Basic {ADMIN_TOKEN}"},
        "empty bearer": {"Authorization": "Bearer "},
        "in x-api-key": {"x-api-key": ADMIN_TOKEN},
        "tenant key, bearer": {"Authorization": f"Bearer {tenant.key}"},
        "tenant key, x-api-key": tenant.headers,
    }
    for name, headers in wrong.items():
        attempts = [
            await admin_client.get("/admin/v1/tenants", headers=headers),
            await admin_client.get(f"/admin/v1/tenants/{tenant.name}/ledger", headers=headers),
            await admin_client.post(
                "/admin/v1/tenants", headers=headers, json={"name": f"intruder-{len(name)}"}
            ),
            await admin_client.post(
                f"/admin/v1/tenants/{tenant.name}/credits",
                headers=headers,
                json={"amount": 1000, "reason": "free money"},
            ),
            await admin_client.post(f"/admin/v1/tenants/{tenant.name}/suspend", headers=headers),
        ]
        for response in attempts:
            assert_error(response, 401, "invalid_admin_token")
            assert response.json()["error"] == "missing or invalid admin token", name

    # Nothing of that went through.
    assert await balance_of(engine, tenant.tenant_id) == 1000
    listed = ok(await admin_client.get("/admin/v1/tenants", headers=ADMIN))
    assert [(each["name"], each["status"]) for each in listed] == [(tenant.name, "active")]
    # The scheme is case-insensitive, as HTTP says.
    lower = {"Authorization": f"bearer {ADMIN_TOKEN}"}
    assert ok(await admin_client.get("/admin/v1/tenants", headers=lower)) == listed


async def test_the_admin_token_opens_no_tenant_route(
    admin_client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine
) -> None:
    for headers in ({"x-api-key": ADMIN_TOKEN}, ADMIN):
        for path in ("/v2/requests", "/v2/account", "/v1/get-user-credits"):
            response = await admin_client.get(path, headers=headers)
            assert_error(response, 401, "unauthorized")
            assert "RateLimit" not in response.headers
        submit = await admin_client.post("/v2/ic-light", headers=headers, json=body())
        assert_error(submit, 401, "unauthorized")
    assert await job_count(engine) == 0
    # The tenant's own key still works alongside.
    assert ok(await admin_client.get("/v2/requests", headers=tenant.headers))["data"] == []


async def test_the_admin_api_is_off_without_a_token(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    """The `client` fixture's settings have no admin token: every admin route answers 403."""
    for headers in ({}, ADMIN, {"Authorization": f"Bearer {tenant.key}"}):
        for response in (
            await client.get("/admin/v1/tenants", headers=headers),
            await client.post("/admin/v1/tenants", headers=headers, json={"name": "sneaky"}),
            await client.get(f"/admin/v1/tenants/{tenant.name}/ledger", headers=headers),
        ):
            assert_error(response, 403, "admin_disabled")
    # The tenant routes are unaffected.
    assert ok(await client.get("/v2/requests", headers=tenant.headers))["data"] == []


# --- validation ------------------------------------------------------------------------------


async def test_a_duplicate_tenant_name_is_a_409(admin_client: httpx.AsyncClient) -> None:
    await created(
        await admin_client.post(
            "/admin/v1/tenants", headers=ADMIN, json={"name": "initech", "credits": 10}
        )
    )

    duplicate = await admin_client.post(
        "/admin/v1/tenants", headers=ADMIN, json={"name": "initech", "credits": 99}
    )

    assert_error(duplicate, 409, "tenant_exists")
    assert "initech" in duplicate.json()["error"]
    listed = ok(await admin_client.get("/admin/v1/tenants", headers=ADMIN))
    assert [(each["name"], each["credit_balance"]) for each in listed] == [("initech", 10)]
    ledger = ok(await admin_client.get("/admin/v1/tenants/initech/ledger", headers=ADMIN))
    assert [entry["amount"] for entry in ledger["data"]] == [10]


async def test_bad_tenant_bodies_are_422(admin_client: httpx.AsyncClient) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "ok", "credits": -1}, "credits"),
        ({"name": "ok", "limits": {"burst": 0}}, "limits.burst"),
        ({"name": "ok", "limits": {"requests_per_minute": -5}}, "limits.requests_per_minute"),
        ({"name": "ok", "limits": {"speed": 5}}, "limits.speed"),
        ({"name": "ok", "plan": "gold"}, "plan"),
    ]
    for payload, field in bad:
        response = await admin_client.post("/admin/v1/tenants", headers=ADMIN, json=payload)
        assert_error(response, 422, "validation_error")
        assert response.json()["field"] == field, (payload, response.text)
    assert ok(await admin_client.get("/admin/v1/tenants", headers=ADMIN)) == []


async def test_grants_must_be_positive_and_adjustments_never_go_below_zero(
    admin_client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine
) -> None:
    credits = f"/admin/v1/tenants/{tenant.name}/credits"
    refused: list[dict[str, Any]] = [
        {"amount": -5, "reason": "negative grant"},
        {"amount": 0, "reason": "empty grant"},
        {"amount": -1001, "reason": "below zero", "kind": "adjust"},
        {"amount": 0, "reason": "nothing", "kind": "adjust"},
        {"amount": 5, "reason": "   "},
        {"amount": 5, "reason": ""},
        {"amount": 5},
        {"amount": 5, "reason": "x", "kind": "charge"},
    ]
    for payload in refused:
        response = await admin_client.post(credits, headers=ADMIN, json=payload)
        assert_error(response, 422, "validation_error")
        assert response.json()["details"], response.text
    assert await balance_of(engine, tenant.tenant_id) == 1000
    ledger = ok(await admin_client.get(f"{credits.removesuffix('credits')}ledger", headers=ADMIN))
    assert [entry["kind"] for entry in ledger["data"]] == ["grant"]

    # Down to exactly zero is allowed, and recorded as an adjustment.
    adjusted = await created(
        await admin_client.post(
            credits, headers=ADMIN, json={"amount": -1000, "reason": "refund", "kind": "adjust"}
        )
    )
    assert (adjusted["kind"], adjusted["amount"], adjusted["balance_after"]) == ("adjust", -1000, 0)
    assert_error(
        await admin_client.post(
            credits, headers=ADMIN, json={"amount": -1, "reason": "one more", "kind": "adjust"}
        ),
        422,
        "validation_error",
    )
    back = await created(
        await admin_client.post(
            credits, headers=ADMIN, json={"amount": 7, "reason": "goodwill", "kind": "adjust"}
        )
    )
    assert back["balance_after"] == 7
    assert await balance_of(engine, tenant.tenant_id) == 7


async def test_limits_need_at_least_one_valid_value(
    admin_client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    path = f"/admin/v1/tenants/{tenant.name}/limits"
    for payload in ({}, {"burst": 0}, {"max_in_flight": -1}, {"rate": 5}):
        response = await admin_client.patch(path, headers=ADMIN, json=payload)
        assert_error(response, 422, "validation_error")
    unchanged = ok(await admin_client.get(f"/admin/v1/tenants/{tenant.name}", headers=ADMIN))
    assert unchanged["limits"] == {"requests_per_minute": 120, "burst": 30, "max_in_flight": 20}


async def test_unknown_tenants_and_keys_are_404(
    admin_client: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    await make_tenant("known")
    for ref in ("nobody", str(uuid.uuid4())):
        base = f"/admin/v1/tenants/{ref}"
        for response in (
            await admin_client.get(base, headers=ADMIN),
            await admin_client.get(f"{base}/ledger", headers=ADMIN),
            await admin_client.get(f"{base}/keys", headers=ADMIN),
            await admin_client.post(f"{base}/keys", headers=ADMIN, json={}),
            await admin_client.post(f"{base}/suspend", headers=ADMIN),
            await admin_client.post(f"{base}/resume", headers=ADMIN),
            await admin_client.patch(f"{base}/limits", headers=ADMIN, json={"burst": 3}),
            await admin_client.post(
                f"{base}/credits", headers=ADMIN, json={"amount": 5, "reason": "x"}
            ),
        ):
            assert_error(response, 404, "tenant_not_found")
            assert ref in response.json()["error"]
    assert_error(
        await admin_client.post("/admin/v1/keys/000000000000/revoke", headers=ADMIN),
        404,
        "key_not_found",
    )
    assert_error(
        await admin_client.get(
            "/admin/v1/tenants/known/ledger", headers=ADMIN, params={"cursor": "page-2"}
        ),
        422,
        "validation_error",
    )


async def test_the_admin_routes_are_documented_under_their_own_tag(
    admin_client: httpx.AsyncClient,
) -> None:
    spec = ok(await admin_client.get("/openapi.json"))

    admin_paths = {path for path in spec["paths"] if path.startswith("/admin/")}
    # Every documented route is there (later features may add more under /admin/v1).
    assert admin_paths >= ADMIN_PATHS
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            tags = operation.get("tags", [])
            if path in admin_paths:
                assert tags == ["admin"], (method, path)
                assert "x-api-key" not in {p["name"] for p in operation.get("parameters", [])}
            else:
                assert "admin" not in tags, (method, path)


async def test_credit_amounts_beyond_the_ledger_range_are_422_not_500(
    admin_app: FastAPI, tenant: TenantKey
) -> None:
    """Balances and entries are Postgres bigints. An amount outside that range (or one that
    would carry the balance past it) is the caller's mistake: a 422 naming `amount`, never
    a 500 from the database driver."""
    # Let a server error come back as the 500 a client would see, instead of raising here.
    transport = httpx.ASGITransport(app=admin_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        credits = f"/admin/v1/tenants/{tenant.name}/credits"
        out_of_range = [
            await client.post(credits, headers=ADMIN, json={"amount": 2**63, "reason": "x"}),
            await client.post(
                credits,
                headers=ADMIN,
                json={"amount": -(2**63) - 1, "reason": "x", "kind": "adjust"},
            ),
            await client.post(
                "/admin/v1/tenants", headers=ADMIN, json={"name": "huge", "credits": 2**63}
            ),
        ]
        # Each fits alone; together they would pass the largest bigint.
        near_the_edge = [
            await client.post(credits, headers=ADMIN, json={"amount": 2**62, "reason": "x"})
            for _ in range(2)
        ]

    for response in out_of_range:
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "validation_error"
    for response in near_the_edge:
        assert response.status_code in (201, 422), response.text
    assert near_the_edge[-1].status_code == 422, near_the_edge[-1].text
