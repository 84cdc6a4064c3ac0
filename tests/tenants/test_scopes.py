"""The scopes and expiry rules of a key, alone (`relight/tenants/scopes.py`, `key_expiry`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from relight.core.errors import InvalidParameter
from relight.tenants.scopes import (
    ALL_SCOPES,
    DEFAULT_SCOPES,
    InsufficientScope,
    KeyExpired,
    check_not_expired,
    normalized,
    parse_duration,
    require,
    scope_problem,
)
from relight.tenants.service import key_expiry

NOW = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)


def test_the_default_is_every_scope_but_keys_manage() -> None:
    assert set(ALL_SCOPES) - set(DEFAULT_SCOPES) == {"keys:manage"}


def test_scopes_are_stored_once_each_in_one_order() -> None:
    assert normalized(["account:read", "relight:submit", "account:read"]) == [
        "relight:submit",
        "account:read",
    ]


def test_an_unknown_or_empty_scope_list_is_named() -> None:
    assert scope_problem(["requests:read"]) is None
    problem = scope_problem(["requests:read", "admin", "root"])
    assert problem is not None
    assert "admin, root" in problem
    assert scope_problem([]) is not None


def test_a_missing_scope_is_a_403_naming_it() -> None:
    require(frozenset(ALL_SCOPES), "keys:manage")
    with pytest.raises(InsufficientScope) as refused:
        require(frozenset(DEFAULT_SCOPES), "keys:manage")
    assert refused.value.status_code == 403
    assert refused.value.code == "insufficient_scope"
    assert "keys:manage" in refused.value.message
    assert refused.value.extra == {"required_scope": "keys:manage"}


def test_a_key_expires_at_its_instant() -> None:
    check_not_expired(None, NOW)
    check_not_expired(NOW + timedelta(seconds=1), NOW)
    with pytest.raises(KeyExpired) as expired:
        check_not_expired(NOW, NOW)
    assert (expired.value.status_code, expired.value.code) == (401, "key_expired")
    assert "expired" in expired.value.message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * 86400),
        ("12h", 43200),
        ("15m", 900),
        ("90s", 90),
        ("3600", 3600),
        ("2w", 1209600),
    ],
)
def test_durations_read_as_the_cli_takes_them(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "soon", "0d", "-1d", "3y", "1.5h"])
def test_a_duration_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_key_expiry_from_an_instant_or_a_lifetime() -> None:
    assert key_expiry(None, None, NOW) is None
    assert key_expiry(None, 3600, NOW) == NOW + timedelta(hours=1)
    assert key_expiry(NOW + timedelta(days=1), None, NOW) == NOW + timedelta(days=1)


@pytest.mark.parametrize(
    ("expires_at", "expires_in", "field"),
    [
        (NOW + timedelta(days=1), 3600, "expires_in"),
        (NOW - timedelta(seconds=1), None, "expires_at"),
        (datetime(2027, 1, 1), None, "expires_at"),  # naive: no time zone
        (NOW + timedelta(days=3651), None, "expires_at"),
    ],
)
def test_a_bad_expiry_is_a_422_naming_the_field(
    expires_at: datetime, expires_in: int | None, field: str
) -> None:
    with pytest.raises(InvalidParameter) as refused:
        key_expiry(expires_at, expires_in, NOW)
    assert refused.value.extra["field"] == field
