"""A short-lived, per-process cache of authenticated API keys, for the submit path.

A submit needs only what its key grants (`KeyGrant`: the key's scopes and expiry, and a
snapshot of its tenant: id, name, limits, allowed backends, default webhook, dispatch weight);
reading it from Postgres on every request costs a round trip and an ORM load. The cache keeps
the grant of a key that authenticated for `RELIGHT_AUTH_CACHE_S` seconds; the expiry is checked
on every use, so a cached key stops at its expiry, not at the cache's.

Changes that matter (a key revoked, or its scopes or expiry changed; a tenant suspended,
resumed, or its limits, backends, webhook or weight changed) are announced with
Postgres `NOTIFY` in the transaction that makes them, so the announcement goes out only if
the change commits, from whatever process made it
(the admin API, `relight-admin`). Every cache listens on a connection of its own and drops the
tenant's entries at once; in the process that made the change, the commit itself drops them.
That connection is `RELIGHT_DATABASE_LISTEN_URL` (`relight.core.db.listen_dsn`): behind a
transaction-pooling PgBouncer a LISTEN would stay on whichever server connection it borrowed,
so it needs a direct one.
A lost announcement (the listening connection died) is bounded by the TTL, and while the
listener is down nothing is cached. Money never depends on the cache: the reservation is a
conditional UPDATE in the database, which also refuses a suspended tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from relight.core.models import Tenant

logger = logging.getLogger(__name__)

# One channel per database (NOTIFY is scoped to the database the API and admin share).
CHANGED_CHANNEL = "relight_auth_changed"
# Everything cached in this process, so that a commit here drops its tenant at once.
_CACHES: weakref.WeakSet[AuthCache] = weakref.WeakSet()


@dataclass(frozen=True)
class TenantSnapshot:
    """What a submit needs to know about its tenant, detached from any session."""

    id: uuid.UUID
    name: str
    status: str
    requests_per_minute: int
    burst: int
    max_in_flight: int
    allowed_backends: tuple[str, ...]
    webhook_url: str | None
    weight: int
    allowed_lanes: tuple[str, ...] = ("normal", "low")
    # The key presented (recorded on the jobs it submits, for usage by key).
    api_key_id: uuid.UUID | None = None

    @classmethod
    def of(cls, tenant: Tenant, api_key_id: uuid.UUID | None = None) -> TenantSnapshot:
        return cls(
            id=tenant.id,
            name=tenant.name,
            status=tenant.status,
            requests_per_minute=tenant.requests_per_minute,
            burst=tenant.burst,
            max_in_flight=tenant.max_in_flight,
            allowed_backends=tuple(tenant.allowed_backends),
            webhook_url=tenant.webhook_url,
            weight=tenant.weight,
            allowed_lanes=tuple(tenant.allowed_lanes),
            api_key_id=api_key_id,
        )


@dataclass(frozen=True)
class KeyGrant:
    """What an authenticated key may do, and for whom, detached from any session."""

    key_id: uuid.UUID
    prefix: str
    scopes: frozenset[str]
    expires_at: datetime | None
    tenant: TenantSnapshot


def forget_tenant_everywhere_in_process(tenant_id: uuid.UUID) -> None:
    """Drop the tenant from every cache of this process (called when its change commits)."""
    for cache in list(_CACHES):
        cache.forget_tenant(tenant_id)


@dataclass
class _Entry:
    grant: KeyGrant
    expires_at: float


class AuthCache:
    """Key → its grant for `ttl_s` seconds, invalidated by `NOTIFY` (see the module)."""

    def __init__(self, ttl_s: float, dsn: str) -> None:
        self.ttl_s = ttl_s
        self._dsn = dsn
        self._entries: dict[bytes, _Entry] = {}
        # Bumped by every invalidation: a lookup that raced with one does not store its result.
        self._generation = 0
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        self._listening_event = asyncio.Event()
        _CACHES.add(self)

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    async def start(self) -> None:
        if not self.enabled:
            return
        self._task = asyncio.create_task(self._listen(), name="relight-auth-cache")
        # Best effort: until the listener is up the cache stores nothing, so do not block on it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening_event.wait(), timeout=2)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._set_listening(False)
        _CACHES.discard(self)

    async def get(self, raw_key: str, load: Callable[[], Awaitable[KeyGrant]]) -> KeyGrant:
        """The cached grant of `raw_key`, else `load()` (which raises for a bad key)."""
        if not self.enabled:
            return await load()
        digest = hashlib.sha256(raw_key.encode()).digest()
        entry = self._entries.get(digest)
        now = time.monotonic()
        if entry is not None and entry.expires_at > now:
            return entry.grant
        generation = self._generation
        grant = await load()
        if self._listening and generation == self._generation:
            self._entries[digest] = _Entry(grant, time.monotonic() + self.ttl_s)
            if len(self._entries) > 10_000:
                self._drop_expired()
        return grant

    def forget_tenant(self, tenant_id: uuid.UUID) -> None:
        self._generation += 1
        for digest in [d for d, e in self._entries.items() if e.grant.tenant.id == tenant_id]:
            del self._entries[digest]

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()

    def _drop_expired(self) -> None:
        now = time.monotonic()
        for digest in [d for d, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[digest]

    def _set_listening(self, listening: bool) -> None:
        self._listening = listening
        if listening:
            self._listening_event.set()
        else:
            self._listening_event.clear()
            # Whatever happened while nobody listened is unknown: start over.
            self.clear()

    def _on_notify(self, connection: object, pid: int, channel: str, payload: str) -> None:
        try:
            self.forget_tenant(uuid.UUID(payload))
        except ValueError:
            self.clear()

    async def _listen(self) -> None:
        while True:
            lost = asyncio.Event()
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(self._dsn)
                connection.add_termination_listener(lambda _, lost=lost: lost.set())
                await connection.add_listener(CHANGED_CHANNEL, self._on_notify)
                self._set_listening(True)
                await lost.wait()
                logger.warning("auth-cache listener lost its connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception:
                # Whatever it is (a refused connection, a backend killed mid-LISTEN, which
                # asyncpg reports as an InternalClientError), the listener must not die: until
                # it is back the cache stores nothing, and it tries again in a second.
                logger.warning("auth-cache listener cannot connect; retrying", exc_info=True)
            finally:
                self._set_listening(False)
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(connection.close(timeout=2))
            await asyncio.sleep(1)
