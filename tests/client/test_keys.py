"""relight-client's key methods against the live api: a managing key (made through the admin
client with `keys:manage`) lists, creates and revokes the tenant's keys; a key without a scope
gets `PermissionDeniedError` naming it."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from relight_client import AsyncRelight, AuthenticationError, PermissionDeniedError, Relight
from relight_client.admin import Admin, AsyncAdmin

from tests.client.conftest import ADMIN_TOKEN
from tests.helpers import png_bytes

pytestmark = pytest.mark.slow

MANAGER_SCOPES = ["relight:submit", "requests:read", "account:read", "keys:manage"]


def test_list_create_and_revoke_keys_through_the_client(base_url: str, admin: Admin) -> None:
    name = f"keys-{uuid.uuid4().hex[:10]}"
    admin.create_tenant(name, credits=100)
    manager_key = admin.create_key(
        name, "manager", scopes=MANAGER_SCOPES, expires_in=timedelta(days=1)
    )
    assert manager_key.scopes == MANAGER_SCOPES
    assert manager_key.expires_at is not None

    with Relight(base_url, manager_key.key) as manager:
        reader = manager.create_key(label="reader", scopes=["requests:read"], expires_in=3600)
        assert reader.key.startswith(f"rl_{reader.prefix}_")
        assert (reader.label, reader.scopes) == ("reader", ["requests:read"])
        assert [key.label for key in manager.list_keys()] == ["manager", "reader"]

        with Relight(base_url, reader.key) as limited:
            assert list(limited.requests.list()) == []
            with pytest.raises(PermissionDeniedError) as refused:
                limited.relight(png_bytes(), "cat")
            assert refused.value.code == "insufficient_scope"
            assert "relight:submit" in str(refused.value)

            assert manager.revoke_key(reader.id).revoked_at is not None
            with pytest.raises(AuthenticationError):
                limited.account()


def test_update_a_key_through_the_client_and_the_admin_client(base_url: str, admin: Admin) -> None:
    name = f"keys-{uuid.uuid4().hex[:10]}"
    admin.create_tenant(name, credits=100)
    manager_key = admin.create_key(name, "manager", scopes=MANAGER_SCOPES)

    with Relight(base_url, manager_key.key) as manager:
        reader = manager.create_key(label="reader", scopes=["requests:read", "account:read"])
        narrowed = manager.update_key(
            reader.id, label="dashboard", scopes=["account:read"], expires_in=timedelta(hours=1)
        )
        assert (narrowed.label, narrowed.scopes) == ("dashboard", ["account:read"])
        assert narrowed.expires_at is not None
        assert manager.list_keys()[1] == narrowed
        assert manager.update_key(reader.id, never_expires=True).expires_at is None
        with Relight(base_url, reader.key) as limited, pytest.raises(PermissionDeniedError):
            list(limited.requests.list())
        with pytest.raises(PermissionDeniedError) as refused:
            manager.update_key(reader.id, scopes=["webhooks:manage"])
        assert refused.value.code == "insufficient_scope"

    widened = admin.update_key(reader.prefix, scopes=["webhooks:manage"], name="hooks")
    assert (widened.label, widened.scopes) == ("hooks", ["webhooks:manage"])


def test_clear_a_keys_label_through_the_client_and_the_admin_client(
    base_url: str, admin: Admin
) -> None:
    name = f"keys-{uuid.uuid4().hex[:10]}"
    admin.create_tenant(name, credits=100)
    manager_key = admin.create_key(name, "manager", scopes=MANAGER_SCOPES)

    with Relight(base_url, manager_key.key) as manager:
        reader = manager.create_key(label="reader", scopes=["requests:read"])
        unlabelled = manager.update_key(reader.id, clear_label=True)
        assert (unlabelled.label, unlabelled.scopes) == (None, ["requests:read"])
        assert [key.label for key in manager.list_keys()] == ["manager", None]
        with pytest.raises(ValueError, match="not both"):
            manager.update_key(reader.id, label="x", clear_label=True)

    assert admin.update_key(manager_key.prefix, clear_label=True).label is None
    assert [key.name for key in admin.list_keys(name)] == [None, None]


async def test_update_a_key_through_the_async_clients(base_url: str) -> None:
    name = f"keys-{uuid.uuid4().hex[:10]}"
    async with AsyncAdmin(base_url, ADMIN_TOKEN) as admin:
        await admin.create_tenant(name, credits=100)
        manager_key = await admin.create_key(name, "manager", scopes=MANAGER_SCOPES)
        relabelled = await admin.update_key(manager_key.id, name="boss", expires_in=600)
        assert (relabelled.label, relabelled.scopes) == ("boss", MANAGER_SCOPES)

    async with AsyncRelight(base_url, manager_key.key) as manager:
        itself = await manager.update_key(
            str(manager_key.id), scopes=["keys:manage"], never_expires=True
        )
        assert (itself.scopes, itself.expires_at) == (["keys:manage"], None)
        assert [key.scopes for key in await manager.list_keys()] == [["keys:manage"]]
