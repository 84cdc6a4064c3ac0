"""`relight-admin key create` with scopes, an expiry and a label (issue 26)."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest

from relight.tenants.scopes import DEFAULT_SCOPES
from tests.cli.test_cli import Admin, admin  # noqa: F401  (the fixture)
from tests.helpers import small_body

pytestmark = pytest.mark.slow


async def test_key_create_with_scopes_expiry_and_label(
    admin: Admin,  # noqa: F811
    client: httpx.AsyncClient,
) -> None:
    (await admin("tenant", "create", "umbrella", "--credits", "50")).json()

    created = (
        await admin(
            "key",
            "create",
            "umbrella",
            "--scopes",
            "requests:read,account:read",
            "--expires",
            "30d",
            "--label",
            "dashboard",
        )
    ).json()

    assert created["scopes"] == ["requests:read", "account:read"]
    assert created["label"] == created["name"] == "dashboard"
    assert created["tenant"] == "umbrella"
    lifetime = datetime.fromisoformat(created["expires_at"]) - datetime.fromisoformat(
        created["created_at"]
    )
    assert timedelta(days=29, hours=23) < lifetime < timedelta(days=30, hours=1)
    headers = {"x-api-key": created["key"]}
    assert (await client.get("/v2/account", headers=headers)).status_code == 200
    refused = await client.post("/v2/ic-light", headers=headers, json=small_body())
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "insufficient_scope"
    assert "relight:submit" in refused.json()["error"]


async def test_key_create_without_options_has_the_default_scopes_and_no_expiry(
    admin: Admin,  # noqa: F811
) -> None:
    (await admin("tenant", "create", "umbrella")).json()

    created = (await admin("key", "create", "umbrella")).json()

    assert created["scopes"] == list(DEFAULT_SCOPES)
    assert created["expires_at"] is None


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--scopes", "requests:read,requests:write", "requests:write"),
        ("--expires", "soon", "soon"),
        ("--expires", "0d", "0d"),
    ],
)
async def test_key_create_refuses_an_unknown_scope_or_duration(
    admin: Admin,  # noqa: F811
    option: str,
    value: str,
    named: str,
) -> None:
    (await admin("tenant", "create", "umbrella")).json()

    error = (await admin("key", "create", "umbrella", option, value)).error()

    assert error["code"] == "validation_error"
    assert named in error["error"]
