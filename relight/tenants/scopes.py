"""What an API key may do: its scopes, and how long it lives.

A key holds a set of scopes; each authenticated public route requires exactly one (declared
where the route is, `api/deps.py`). A new key gets `DEFAULT_SCOPES`: everything but managing
keys, which must be asked for. Keys made before scopes existed were given the same default by
migration 0017, so they keep doing all they could do before (there were no key routes then).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum

from relight.core.errors import RelightError, Unauthorized


class Scope(StrEnum):
    SUBMIT = "relight:submit"
    REQUESTS_READ = "requests:read"
    REQUESTS_CANCEL = "requests:cancel"
    WEBHOOKS_MANAGE = "webhooks:manage"
    ACCOUNT_READ = "account:read"
    KEYS_MANAGE = "keys:manage"


ALL_SCOPES: tuple[str, ...] = tuple(scope.value for scope in Scope)
DEFAULT_SCOPES: tuple[str, ...] = tuple(s for s in ALL_SCOPES if s != Scope.KEYS_MANAGE)
SCOPES_DESCRIPTION = f"any of {', '.join(ALL_SCOPES)}; default: all but {Scope.KEYS_MANAGE.value}"
# Keys live at most ten years; a shorter life is the caller's choice.
MAX_KEY_LIFETIME = timedelta(days=3650)
DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
DURATION_UNITS_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class InsufficientScope(RelightError):
    status_code = 403
    code = "insufficient_scope"


class KeyExpired(Unauthorized):
    code = "key_expired"


def scope_problem(scopes: list[str]) -> str | None:
    """What is wrong with `scopes` as a key's scopes, or None."""
    if not scopes:
        return f"scopes must name at least one of {', '.join(ALL_SCOPES)}"
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown:
        return f"unknown scopes {', '.join(unknown)}: use any of {', '.join(ALL_SCOPES)}"
    return None


def normalized(scopes: list[str] | tuple[str, ...]) -> list[str]:
    """The scopes without repeats, in the order of `Scope` (how they are stored and shown)."""
    wanted = set(scopes)
    return [scope for scope in ALL_SCOPES if scope in wanted]


def require(held: frozenset[str], scope: str) -> None:
    """403 `insufficient_scope` naming `scope` unless the key holds it."""
    if scope not in held:
        raise InsufficientScope(
            f"this API key lacks the scope {scope}",
            extra={"required_scope": scope},
        )


def check_not_expired(expires_at: datetime | None, now: datetime) -> None:
    """401 `key_expired` once the key's expiry has passed."""
    if expires_at is not None and expires_at <= now:
        raise KeyExpired(f"this API key expired at {expires_at.isoformat()}")


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `15m`, `90s`, `2w` or plain seconds, as a timedelta (ValueError if not)."""
    match = DURATION.match(text)
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 15m or 3600s")
    return timedelta(seconds=int(match.group(1)) * DURATION_UNITS_S[match.group(2)])
