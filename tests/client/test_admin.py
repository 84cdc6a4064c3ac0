"""`relight_client.admin` against the live admin API: tenants, keys, credits, ledger."""

from __future__ import annotations

import uuid

import pytest
from relight_client import AuthenticationError, PermissionDeniedError, Relight
from relight_client.admin import Admin, AsyncAdmin

from tests.client.conftest import ADMIN_TOKEN, fast
from tests.helpers import png_bytes

pytestmark = pytest.mark.slow


def test_a_tenants_life_through_the_admin_client(base_url: str, admin: Admin) -> None:
    name = f"admin-{uuid.uuid4().hex[:10]}"

    created = admin.create_tenant(name, credits=100, requests_per_minute=600, max_in_flight=5)
    key = admin.create_key(name, "prod")
    limited = admin.set_limits(name, burst=7)
    backends = admin.set_backends(name, ["local"])
    hooked = admin.set_webhook(name, "https://example.com/hook")
    weighted = admin.set_weight(name, 3)
    granted = admin.grant_credits(name, 50, "invoice 42")
    adjusted = admin.grant_credits(name, -20, "correction", kind="adjust")

    assert created.credit_balance == 100
    assert created.limits.requests_per_minute == 600
    assert created.limits.max_in_flight == 5
    assert key.key.startswith("rl_")
    assert limited.limits.burst == 7
    assert backends.allowed_backends == ["local"]
    assert hooked.webhook_url == "https://example.com/hook"
    assert (created.weight, weighted.weight) == (1, 3)
    assert (granted.kind, granted.balance_after) == ("grant", 150)
    assert (adjusted.kind, adjusted.balance_after) == ("adjust", 130)
    assert admin.get_tenant(name).credit_balance == 130
    assert admin.get_tenant(str(created.id)).name == name
    assert name in [tenant.name for tenant in admin.list_tenants()]
    entries = list(admin.ledger(name, page_size=1))
    assert [(e.kind, e.amount) for e in entries] == [("adjust", -20), ("grant", 50), ("grant", 100)]

    with Relight(base_url, key.key) as client:
        assert client.run(png_bytes(), "cat", timeout=60, **fast()).status == "COMPLETED"
        assert admin.suspend(name).status == "suspended"
        with pytest.raises(PermissionDeniedError) as suspended:
            client.relight(png_bytes(), "cat", **fast())
        assert admin.resume(name).status == "active"
        assert client.account().status == "active"

        (listed,) = admin.list_keys(name)
        assert listed.prefix == key.prefix
        assert admin.revoke_key(key.prefix).revoked_at is not None
        with pytest.raises(AuthenticationError):
            client.account()
    assert suspended.value.status_code == 403


def test_a_wrong_admin_token_is_refused(base_url: str) -> None:
    with (
        Admin(base_url, "not-the-admin-token-at-all") as stranger,
        pytest.raises(AuthenticationError) as raised,
    ):
        stranger.list_tenants()

    assert raised.value.status_code == 401


async def test_the_async_admin_client(base_url: str) -> None:
    name = f"admin-{uuid.uuid4().hex[:10]}"
    async with AsyncAdmin(base_url, ADMIN_TOKEN) as admin:
        await admin.create_tenant(name, credits=10)
        key = await admin.create_key(name)
        await admin.grant_credits(name, 5, "bonus")
        await admin.set_limits(name, requests_per_minute=100)
        await admin.set_backends(name, ["local"])
        await admin.set_webhook(name, None)
        await admin.suspend(name)
        resumed = await admin.resume(name)
        tenants = await admin.list_tenants()
        keys = await admin.list_keys(name)
        revoked = await admin.revoke_key(key.prefix)
        entries = [entry async for entry in admin.ledger(name)]
        fetched = await admin.get_tenant(name)

    assert resumed.credit_balance == 15
    assert resumed.limits.requests_per_minute == 100
    assert name in [tenant.name for tenant in tenants]
    assert [k.prefix for k in keys] == [key.prefix]
    assert revoked.revoked_at is not None
    assert [entry.amount for entry in entries] == [5, 10]
    assert fetched.name == name
