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


async def test_key_update_changes_scopes_label_and_expiry_and_the_key_obeys(
    admin: Admin,  # noqa: F811
    client: httpx.AsyncClient,
) -> None:
    (await admin("tenant", "create", "umbrella", "--credits", "50")).json()
    created = (await admin("key", "create", "umbrella", "--expires", "1d")).json()
    headers = {"x-api-key": created["key"]}
    assert (
        await client.post("/v2/ic-light", headers=headers, json=small_body())
    ).status_code == 202

    updated = (
        await admin(
            "key", "update", created["id"], "--scopes", "account:read,keys:manage", "--label", "ci"
        )
    ).json()

    assert updated["scopes"] == ["account:read", "keys:manage"]  # any scope, keys:manage too
    assert updated["label"] == "ci"
    assert updated["expires_at"] == created["expires_at"]
    refused = await client.post("/v2/ic-light", headers=headers, json=small_body())
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "insufficient_scope"
    listed = (await client.get("/v2/keys", headers=headers)).json()["data"]
    assert [(key["label"], key["scopes"]) for key in listed] == [("ci", updated["scopes"])]

    forever = (await admin("key", "update", created["prefix"], "--no-expiry")).json()
    assert forever["expires_at"] is None
    assert forever["scopes"] == updated["scopes"]
    later = (await admin("key", "update", created["key"], "--expires", "2h")).json()
    lifetime = datetime.fromisoformat(later["expires_at"]) - datetime.fromisoformat(
        later["created_at"]
    )
    assert timedelta(hours=1, minutes=50) < lifetime < timedelta(hours=2, minutes=10)


async def test_key_update_no_label_clears_the_label_and_keeps_the_rest(
    admin: Admin,  # noqa: F811
    client: httpx.AsyncClient,
) -> None:
    (await admin("tenant", "create", "umbrella")).json()
    created = (
        await admin("key", "create", "umbrella", "--label", "ci", "--scopes", "keys:manage")
    ).json()
    assert created["label"] == "ci"

    cleared = (await admin("key", "update", created["prefix"], "--no-label")).json()

    assert cleared["label"] is None
    assert (cleared["scopes"], cleared["expires_at"]) == (created["scopes"], created["expires_at"])
    listed = (await client.get("/v2/keys", headers={"x-api-key": created["key"]})).json()["data"]
    assert [key["label"] for key in listed] == [None]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--scopes", "requests:read,requests:write"], "requests:write"),
        (["--expires", "soon"], "soon"),
        (["--expires", "1d", "--no-expiry"], "not both"),
        (["--label", "ci", "--no-label"], "not both"),
        ([], "at least one"),
    ],
)
async def test_key_update_refuses_a_bad_change_and_an_unknown_key(
    admin: Admin,  # noqa: F811
    args: list[str],
    named: str,
) -> None:
    (await admin("tenant", "create", "umbrella")).json()
    created = (await admin("key", "create", "umbrella")).json()

    error = (await admin("key", "update", created["id"], *args)).error()

    assert error["code"] == "validation_error"
    assert named in error["error"]
    missing = (await admin("key", "update", "000000000000", "--label", "x")).error()
    assert missing["code"] == "key_not_found"
