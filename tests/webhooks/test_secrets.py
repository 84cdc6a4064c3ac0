"""The tenant's webhook signing secret (GET, rotate) and its default webhook URL."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook

from api.app import create_app
from relight.core.config import Settings
from relight.core.egress import EgressRefused
from relight.core.models import Tenant
from relight.tenants.service import set_default_webhook
from tests.conftest import MakeTenant, RunWorker, TenantKey
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import fast_body as body
from tests.helpers import get_record, submit

ADMIN_TOKEN = "w" * 32

Sessions = async_sessionmaker[AsyncSession]


async def get_secret(client: httpx.AsyncClient, tenant: TenantKey) -> dict[str, Any]:
    response = await client.get("/v2/webhooks/secret", headers=tenant.headers)
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def rotate(client: httpx.AsyncClient, tenant: TenantKey) -> dict[str, Any]:
    response = await client.post("/v2/webhooks/secret/rotate", headers=tenant.headers)
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def assert_usable_secret(secret: str) -> None:
    """`whsec_` and base64 of 32 random bytes, as Standard Webhooks writes it."""
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    Webhook(secret)  # the official library accepts it


async def set_default(
    sessionmaker: Sessions, tenant: TenantKey, url: str | None, settings: Settings
) -> None:
    async with sessionmaker() as session, session.begin():
        found = await session.get(Tenant, tenant.tenant_id)
        assert found is not None
        await set_default_webhook(session, found, url, settings.egress_policy)


async def test_secret_is_made_once_and_stays(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    first = await get_secret(client, tenant)
    assert_usable_secret(first["secret"])
    assert first["previous_secret_expires_at"] is None
    assert await get_secret(client, tenant) == first
    assert await get_secret(client, tenant) == first


async def test_rotation_issues_a_new_secret_with_a_day_of_overlap(
    client: httpx.AsyncClient, tenant: TenantKey, settings: Settings
) -> None:
    old = (await get_secret(client, tenant))["secret"]
    before = datetime.now(UTC)
    rotated = await rotate(client, tenant)
    assert_usable_secret(rotated["secret"])
    assert rotated["secret"] != old
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    overlap = timedelta(seconds=settings.webhook_secret_overlap_s)
    assert overlap == timedelta(hours=24)
    assert before + overlap - timedelta(seconds=5) <= expires
    assert expires <= datetime.now(UTC) + overlap + timedelta(seconds=5)
    # GET now answers the new secret, and when the old one stops signing.
    assert await get_secret(client, tenant) == rotated

    again = await rotate(client, tenant)
    assert again["secret"] not in (old, rotated["secret"])


async def test_rotating_a_tenant_that_never_read_its_secret(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    rotated = await rotate(client, tenant)
    assert_usable_secret(rotated["secret"])
    assert rotated["previous_secret_expires_at"] is not None
    assert (await get_secret(client, tenant))["secret"] == rotated["secret"]


async def test_each_tenant_has_its_own_secret(
    client: httpx.AsyncClient, tenant: TenantKey, make_tenant: MakeTenant
) -> None:
    other = await make_tenant("globex")
    mine = (await get_secret(client, tenant))["secret"]
    theirs = (await get_secret(client, other))["secret"]
    assert mine != theirs
    await rotate(client, other)
    assert (await get_secret(client, tenant))["secret"] == mine


async def test_secret_routes_need_a_key(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    for method, path in (("GET", "/v2/webhooks/secret"), ("POST", "/v2/webhooks/secret/rotate")):
        response = await client.request(method, path)
        assert response.status_code == 401, (path, response.text)
        assert "secret" not in response.json()
        response = await client.request(method, path, headers={"x-api-key": "rl_wrong"})
        assert response.status_code == 401, (path, response.text)


async def test_tenant_default_webhook_is_used_when_a_request_names_none(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    sessionmaker: Sessions,
    settings: Settings,
) -> None:
    await set_default(sessionmaker, tenant, receiver.url("/default"), settings)
    defaulted = await submit(client, tenant, body())
    named = await submit(client, tenant, body(webhook_url=receiver.url("/named")))
    await run_worker()

    secret = (await get_secret(client, tenant))["secret"]
    [request] = receiver.received("/default")
    payload = Webhook(secret).verify(request.body, request.headers)
    assert payload["request_id"] == defaulted
    assert payload["event"] == "completed"
    # A request's own webhook_url wins over the default.
    [request] = receiver.received("/named")
    assert Webhook(secret).verify(request.body, request.headers)["request_id"] == named
    assert len(receiver.received()) == 2

    # With the default removed, a request without webhook_url sends nothing.
    await set_default(sessionmaker, tenant, None, settings)
    quiet = await submit(client, tenant, body())
    await run_worker()
    assert (await get_record(client, tenant, quiet))["status"] == "COMPLETED"
    assert len(receiver.received()) == 2


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://0x7f000002/hook",
    ],
)
async def test_refused_default_webhook_is_a_422(
    sessionmaker: Sessions,
    settings: Settings,
    tenant: TenantKey,
    url: str,
) -> None:
    with pytest.raises(EgressRefused) as refused:
        await set_default(sessionmaker, tenant, url, settings)
    assert refused.value.status_code == 422
    assert refused.value.code == "url_not_allowed"
    async with sessionmaker() as session:
        found = await session.get(Tenant, tenant.tenant_id)
        assert found is not None
        assert found.webhook_url is None


@pytest.fixture
async def admin_client(settings: Settings, clean_state: None) -> AsyncIterator[httpx.AsyncClient]:
    application: FastAPI = create_app(settings.model_copy(update={"admin_token": ADMIN_TOKEN}))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as client:
            yield client


async def test_admin_api_sets_the_default_webhook_and_refuses_private_ones(
    admin_client: httpx.AsyncClient, tenant: TenantKey, receiver: WebhookReceiver
) -> None:
    path = f"/admin/v1/tenants/{tenant.name}/webhook"
    response = await admin_client.put(path, json={"url": "http://169.254.169.254/latest"})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "url_not_allowed"
    assert response.json()["field"] == "url"

    response = await admin_client.put(path, json={"url": receiver.url("/default")})
    assert response.status_code == 200, response.text
    assert response.json()["webhook_url"] == receiver.url("/default")
    response = await admin_client.put(path, json={"url": None})
    assert response.status_code == 200, response.text
    assert response.json()["webhook_url"] is None
