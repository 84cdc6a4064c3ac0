"""The operators' sign-in: a signed session cookie, its CSRF token, and sign-out.

Stdlib HMAC rather than a session library: the cookie carries no data but its issue time and a
random nonce, so signing `time.nonce` is all there is to it. The signature also covers a
digest of the admin token, so changing RELIGHT_ADMIN_TOKEN signs every operator out. The CSRF
token of a form is an HMAC of the session's nonce: a page of another origin can neither read
it nor (SameSite=Strict) send the cookie. Sign-out records the nonce in Redis until the
cookie would have expired, so a copied cookie stops working too.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from relight.core.config import Settings

logger = logging.getLogger(__name__)

COOKIE_NAME = "relight_admin_session"
COOKIE_PATH = "/admin/ui"
SESSION_TTL_S = 8 * 3600


@dataclass(frozen=True)
class OperatorSession:
    issued_at: int
    nonce: str
    csrf_token: str

    @property
    def log_id(self) -> str:
        """Names the session in logs and attempt records: a digest of its nonce, which is
        part of the cookie and so never logged itself."""
        return hashlib.sha256(self.nonce.encode()).hexdigest()[:12]


def token_matches(settings: Settings, presented: str) -> bool:
    """Whether `presented` is the admin token (constant time)."""
    if not settings.admin_token:
        return False
    return hmac.compare_digest(presented.strip().encode(), settings.admin_token.encode())


def _mac(settings: Settings, purpose: str, message: str) -> str:
    token_digest = hashlib.sha256((settings.admin_token or "").encode()).hexdigest()
    key = f"{settings.secret_key}:{token_digest}".encode()
    return hmac.new(key, f"{purpose}:{message}".encode(), hashlib.sha256).hexdigest()


def _session(settings: Settings, issued_at: int, nonce: str) -> OperatorSession:
    return OperatorSession(issued_at, nonce, _mac(settings, "admin-ui-csrf", nonce))


def new_session(settings: Settings) -> tuple[OperatorSession, str]:
    """A fresh session and the cookie value that carries it."""
    issued_at, nonce = int(time.time()), secrets.token_urlsafe(18)
    signature = _mac(settings, "admin-ui-session", f"{issued_at}.{nonce}")
    return _session(settings, issued_at, nonce), f"{issued_at}.{nonce}.{signature}"


def _ended_key(settings: Settings, nonce: str) -> str:
    return f"{settings.queue_name}:admin-ui:ended:{nonce}"


async def read_session(
    settings: Settings, redis: Redis, cookie: str | None
) -> OperatorSession | None:
    """The session a cookie carries, if it is genuine, current and not signed out."""
    if not settings.admin_token or not cookie:
        return None
    issued, _, rest = cookie.partition(".")
    nonce, _, signature = rest.rpartition(".")
    if not issued.isdigit() or not nonce:
        return None
    expected = _mac(settings, "admin-ui-session", f"{issued}.{nonce}")
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return None
    if not 0 <= time.time() - int(issued) < SESSION_TTL_S:
        return None
    try:
        if await redis.exists(_ended_key(settings, nonce)):
            return None
    except (RedisError, OSError):
        # Redis down must not lock operators out of the page they need then.
        logger.warning("could not check admin sign-outs in Redis", exc_info=True)
    return _session(settings, int(issued), nonce)


def csrf_matches(session: OperatorSession, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(
        session.csrf_token.encode(), presented.encode()
    )


async def end_session(settings: Settings, redis: Redis, session: OperatorSession) -> None:
    """Refuse this session's cookie from now on (until it would have expired anyway)."""
    remaining = SESSION_TTL_S - (int(time.time()) - session.issued_at)
    try:
        await redis.set(_ended_key(settings, session.nonce), 1, ex=max(1, remaining))
    except (RedisError, OSError):
        logger.warning("could not record an admin sign-out in Redis", exc_info=True)
