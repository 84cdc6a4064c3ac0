"""The tenant's own account: `GET /v1/get-user-credits` (Segmind), `GET /v2/account`, and the
`x-remaining-credits` header of `/v1/ic-light`, all checked against the ledger in Postgres."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.core.models import Tenant
from relight.core.params import RelightParams
from relight.credits.pricing import price
from relight.tenants.schemas import LimitsUpdate
from relight.tenants.service import set_limits
from tests.conftest import MakeTenant, RunWorker, TenantKey
from tests.fakes.image_server import ImageServer
from tests.helpers import (
    assert_no_server_errors,
    balance_of,
    cancel,
    get_record,
    png_bytes,
    submit,
)

START = 1000
DEFAULT_PRICE = 10
SMALL_PNG_BASE64 = base64.b64encode(png_bytes((64, 80), (60, 120, 200))).decode()
# A request the classic engine renders in a blink: one 256×256 image at 10 steps.
FAST: dict[str, Any] = {"width": 256, "height": 256, "highres_scale": 1, "steps": 10}
ACCOUNT_ROUTES = ("/v1/get-user-credits", "/v2/account")


def body(subject_image: str = SMALL_PNG_BASE64, **overrides: Any) -> dict[str, Any]:
    return {"prompt": "cat, neon rim light", "subject_image": subject_image, **overrides}


@pytest.fixture(autouse=True)
def no_server_errors(client: httpx.AsyncClient) -> Iterator[None]:
    """No answer in these tests may be a 5xx."""
    with assert_no_server_errors(client):
        yield


async def credits_of(client: httpx.AsyncClient, tenant: TenantKey) -> int:
    """The balance as Segmind's `GET /v1/get-user-credits` reports it."""
    response = await client.get("/v1/get-user-credits", headers=tenant.headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert list(answer) == ["credits"]
    credits = answer["credits"]
    assert isinstance(credits, int)
    return credits


async def account_of(client: httpx.AsyncClient, tenant: TenantKey) -> dict[str, Any]:
    response = await client.get("/v2/account", headers=tenant.headers)
    assert response.status_code == 200, response.text
    account: dict[str, Any] = response.json()
    return account


# --- GET /v1/get-user-credits -------------------------------------------------------------------


async def test_get_user_credits_follows_submits_and_refunds(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    engine: AsyncEngine,
    image_server: ImageServer,
) -> None:
    assert await credits_of(client, tenant) == START == await balance_of(engine, tenant.tenant_id)

    succeeding = await submit(client, tenant, body())
    assert await credits_of(client, tenant) == START - DEFAULT_PRICE
    # This one's subject is a 404: the job fails for good and is refunded.
    failing = await submit(client, tenant, body(image_server.url("/missing")))
    assert await credits_of(client, tenant) == START - 2 * DEFAULT_PRICE

    await run_worker()

    assert (await get_record(client, tenant, succeeding))["status"] == "COMPLETED"
    failed = await get_record(client, tenant, failing)
    assert (failed["status"], failed["credits"]["charged"]) == ("FAILED", 0)
    assert await credits_of(client, tenant) == START - DEFAULT_PRICE
    assert await balance_of(engine, tenant.tenant_id) == START - DEFAULT_PRICE


async def test_account_routes_carry_the_rate_limit_headers(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    for route in ACCOUNT_ROUTES:
        response = await client.get(route, headers=tenant.headers)
        assert response.status_code == 200, response.text
        assert response.headers["RateLimit-Policy"].startswith('"tenant";q=30;w=')
        assert response.headers["RateLimit"].startswith('"tenant";r=')
        # Reading the account does not spend the allowance: all 30 of the burst remain.
        assert response.headers["RateLimit"].startswith('"tenant";r=30;')


# --- GET /v2/account ----------------------------------------------------------------------------


async def test_a_new_account_shows_its_balance_default_limits_and_no_usage(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    assert await account_of(client, tenant) == {
        "tenant_id": str(tenant.tenant_id),
        "name": "acme",
        "status": "active",
        "credits": START,
        "limits": {"requests_per_minute": 120, "burst": 30, "max_in_flight": 20},
        "usage": {"active_jobs": 0, "requests_30d": {}, "credits_charged_30d": 0},
    }


async def test_account_usage_counts_requests_by_status_and_the_credits_charged(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    settings: Settings,
    image_server: ImageServer,
) -> None:
    fast_price = price(RelightParams(prompt="x", **FAST), settings.credits_per_default_image)
    completed = await submit(client, tenant, body(**FAST))
    failed = await submit(client, tenant, body(image_server.url("/missing"), **FAST))
    await run_worker()
    assert (await get_record(client, tenant, completed))["status"] == "COMPLETED"
    assert (await get_record(client, tenant, failed))["status"] == "FAILED"
    await submit(client, tenant, body())  # stays queued: no worker runs after this
    canceled = await submit(client, tenant, body())
    await cancel(client, tenant, canceled)

    account = await account_of(client, tenant)

    assert account["credits"] == START - fast_price - DEFAULT_PRICE
    assert account["credits"] == await credits_of(client, tenant)
    assert account["usage"] == {
        "active_jobs": 1,
        "requests_30d": {"COMPLETED": 1, "FAILED": 1, "QUEUED": 1, "CANCELED": 1},
        "credits_charged_30d": fast_price,
    }


async def test_account_shows_changed_limits(
    client: httpx.AsyncClient, tenant: TenantKey, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with sessionmaker() as session, session.begin():
        row = await session.get(Tenant, tenant.tenant_id)
        assert row is not None
        await set_limits(session, row, LimitsUpdate(burst=5, max_in_flight=2))

    account = await account_of(client, tenant)

    assert account["limits"] == {"requests_per_minute": 120, "burst": 5, "max_in_flight": 2}


async def test_each_tenant_sees_only_its_own_numbers(
    client: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    busy = await make_tenant("busy", credits=500)
    idle = await make_tenant("idle", credits=70)
    await submit(client, busy, body())
    await submit(client, busy, body())

    assert await credits_of(client, busy) == 500 - 2 * DEFAULT_PRICE
    assert await credits_of(client, idle) == 70
    busy_account = await account_of(client, busy)
    idle_account = await account_of(client, idle)
    assert (busy_account["name"], busy_account["credits"]) == ("busy", 480)
    assert busy_account["usage"] == {
        "active_jobs": 2,
        "requests_30d": {"QUEUED": 2},
        "credits_charged_30d": 0,
    }
    assert (idle_account["name"], idle_account["tenant_id"]) == ("idle", str(idle.tenant_id))
    assert idle_account["credits"] == 70
    assert idle_account["usage"] == {"active_jobs": 0, "requests_30d": {}, "credits_charged_30d": 0}


@pytest.mark.parametrize("route", ACCOUNT_ROUTES)
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-key"),
        pytest.param({"x-api-key": "rl_nosuchkey_secret"}, id="unknown-key"),
        pytest.param({"x-api-key": "not a key"}, id="malformed-key"),
        pytest.param({"authorization": "Bearer "}, id="empty-bearer"),
    ],
)
async def test_account_routes_need_a_valid_key(
    client: httpx.AsyncClient, tenant: TenantKey, route: str, headers: dict[str, str]
) -> None:
    response = await client.get(route, headers=headers)

    assert response.status_code == 401, response.text
    assert response.json()["code"] == "unauthorized"
    assert "credits" not in response.json()


async def test_the_key_also_works_as_a_bearer_token(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await client.get(
        "/v1/get-user-credits", headers={"authorization": f"Bearer {tenant.key}"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"credits": START}


# --- x-remaining-credits on /v1/ic-light --------------------------------------------------------


async def test_v1_ic_light_reports_the_remaining_credits(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    background_worker: None,
    image_server: ImageServer,
    engine: AsyncEngine,
) -> None:
    response = await client.post(
        "/v1/ic-light",
        headers=tenant.headers,
        json=body(image_server.url("/chelsea.png"), output_format="png", **FAST),
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    remaining = int(response.headers["x-remaining-credits"])
    record = await get_record(client, tenant, response.headers["x-request-id"])
    assert record["status"] == "COMPLETED"
    assert remaining == START - record["credits"]["charged"]
    assert remaining == await credits_of(client, tenant)
    assert remaining == await balance_of(engine, tenant.tenant_id)

    second = await client.post(
        "/v1/ic-light",
        headers=tenant.headers,
        json=body(image_server.url("/chelsea.png"), output_format="png", **FAST),
    )
    assert second.status_code == 200, second.text
    assert int(second.headers["x-remaining-credits"]) == remaining - record["credits"]["charged"]
    assert int(second.headers["x-remaining-credits"]) == await credits_of(client, tenant)


async def test_v1_ic_light_without_enough_credits_is_a_406_with_the_numbers(
    client: httpx.AsyncClient, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    poor = await make_tenant("poor", credits=DEFAULT_PRICE - 1)

    response = await client.post("/v1/ic-light", headers=poor.headers, json=body())

    assert response.status_code == 406, response.text
    error = response.json()
    assert error["code"] == "insufficient_credits"
    assert (error["required"], error["available"]) == (DEFAULT_PRICE, DEFAULT_PRICE - 1)
    assert await credits_of(client, poor) == DEFAULT_PRICE - 1
    assert await balance_of(engine, poor.tenant_id) == DEFAULT_PRICE - 1
