"""The submit path's auth cache (RELIGHT_AUTH_CACHE_S): a revoked key or a changed tenant is
refused at once by every API process (Postgres NOTIFY, sent by whatever process made the
change), within the TTL when that message is lost, and never lets a tenant spend what the
database refuses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api.app import create_app
from relight.core.config import Settings
from relight.core.models import TenantStatus
from relight.tenants.auth_cache import AuthCache
from relight.tenants.schemas import LimitsUpdate
from relight.tenants.service import find_tenant, set_limits, set_tenant_status
from tests.cli_runner import admin_env, run_admin
from tests.conftest import MakeTenant, TenantKey
from tests.fakes.image_server import ImageServer
from tests.helpers import balance_of, job_count
from tests.waiting import wait_until

ADMIN_TOKEN = "y" * 32
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Far longer than any test waits: what these tests see within it is the invalidation.
LONG_TTL_S = 300.0
# "At once", as a loaded machine may stretch it: still ten times shorter than LONG_TTL_S.
AT_ONCE_S = 30.0

Client = httpx.AsyncClient


@asynccontextmanager
async def api_process(settings: Settings, **overrides: Any) -> AsyncIterator[Client]:
    """One more API "process": its own app, pools and auth cache, on the shared database."""
    application = create_app(settings.model_copy(update=overrides))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def url_body(image_server: ImageServer, **overrides: Any) -> dict[str, Any]:
    """A request whose subject is a URL (the worker fetches it): submit stores nothing."""
    return {"prompt": "cat, soft window light", "subject_image": image_server.url("/cat.png")} | (
        overrides
    )


async def submit_status(client: Client, tenant: TenantKey, body: dict[str, Any]) -> int:
    response = await client.post("/v2/ic-light", headers=tenant.headers, json=body)
    return response.status_code


async def status_within(
    seconds: float, expected: int, submit: Callable[[], Awaitable[int]]
) -> float:
    """Submit until the answer is `expected`; how long that took (fails after `seconds`)."""
    started = time.monotonic()
    while True:
        status = await submit()
        if status == expected:
            return time.monotonic() - started
        assert time.monotonic() - started < seconds, f"still {status} after {seconds} s"
        await asyncio.sleep(0.02)


@pytest.fixture
def admin(settings: Settings, clean_state: None, tmp_path: Path) -> Callable[..., Awaitable[Any]]:
    """`relight-admin ARGS…` in a process of its own, against the test database."""

    async def run(*args: str) -> Any:
        env = {**admin_env(), "RELIGHT_DATABASE_URL": settings.database_url}
        return (await run_admin(*args, env=env, cwd=tmp_path)).json()

    return run


@pytest.mark.slow
async def test_a_key_revoked_by_another_process_is_refused_at_once(
    settings: Settings,
    tenant: TenantKey,
    image_server: ImageServer,
    admin: Callable[..., Awaitable[Any]],
) -> None:
    body = url_body(image_server)
    async with api_process(settings, auth_cache_s=LONG_TTL_S) as api:
        assert await submit_status(api, tenant, body) == 202  # the key is cached now

        await admin("key", "revoke", tenant.key)  # relight-admin: only NOTIFY reaches `api`

        took = await status_within(AT_ONCE_S, 401, lambda: submit_status(api, tenant, body))
    assert took < AT_ONCE_S < LONG_TTL_S


@pytest.mark.slow
async def test_backends_changed_by_another_process_apply_at_once(
    settings: Settings,
    tenant: TenantKey,
    image_server: ImageServer,
    admin: Callable[..., Awaitable[Any]],
) -> None:
    body = url_body(image_server, backend="local")
    async with api_process(settings, auth_cache_s=LONG_TTL_S) as api:
        assert await submit_status(api, tenant, body) == 202

        await admin("tenant", "set-backends", tenant.name, "segmind")

        await status_within(AT_ONCE_S, 403, lambda: submit_status(api, tenant, body))
        response = await api.post("/v2/ic-light", headers=tenant.headers, json=body)
        assert response.json()["code"] == "backend_not_allowed"


async def test_admin_changes_reach_every_api_process_at_once(
    settings: Settings, tenant: TenantKey, image_server: ImageServer, clean_state: None
) -> None:
    body = url_body(image_server)
    admin_settings = {"admin_token": ADMIN_TOKEN, "auth_cache_s": LONG_TTL_S}
    async with (
        api_process(settings, **admin_settings) as first,
        api_process(settings, auth_cache_s=LONG_TTL_S) as second,
    ):
        for api in (first, second):
            assert await submit_status(api, tenant, body) == 202

        suspended = await first.post(f"/admin/v1/tenants/{tenant.name}/suspend", headers=ADMIN)
        assert suspended.status_code == 200, suspended.text
        for api in (first, second):
            response = await api.post("/v2/ic-light", headers=tenant.headers, json=body)
            assert response.status_code == 403, response.text
            assert response.json()["code"] == "tenant_suspended"

        resumed = await first.post(f"/admin/v1/tenants/{tenant.name}/resume", headers=ADMIN)
        assert resumed.status_code == 200, resumed.text
        for api in (first, second):
            assert await submit_status(api, tenant, body) == 202

        # A tighter rate limit applies at once too (the limits are part of what is cached).
        limits = await first.patch(
            f"/admin/v1/tenants/{tenant.name}/limits",
            headers=ADMIN,
            json={"burst": 1, "requests_per_minute": 1},
        )
        assert limits.status_code == 200, limits.text
        statuses = [await submit_status(second, tenant, body) for _ in range(3)]
        assert statuses.count(429) >= 2, statuses

        revoked = await first.post(f"/admin/v1/keys/{tenant.key}/revoke", headers=ADMIN)
        assert revoked.status_code == 200, revoked.text
        for api in (first, second):
            assert await submit_status(api, tenant, body) == 401


async def test_a_lost_announcement_is_bounded_by_the_ttl(
    settings: Settings, tenant: TenantKey, image_server: ImageServer, engine: AsyncEngine
) -> None:
    body = url_body(image_server)
    # Long enough that "still cached" below cannot be undone by a slow machine; far shorter
    # than what would be left to wait without a TTL (LONG_TTL_S, or for ever).
    ttl_s = 3.0
    async with api_process(settings, auth_cache_s=ttl_s) as api:
        assert await submit_status(api, tenant, body) == 202
        revoked_at = time.monotonic()
        # Revoked behind the services' back: no NOTIFY, as if the message were lost.
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE api_key SET revoked_at = now()"))
        # Still served from the cache: a lost message costs at most the TTL.
        assert await submit_status(api, tenant, body) == 202

        took = await status_within(ttl_s + 20, 401, lambda: submit_status(api, tenant, body))
    assert time.monotonic() - revoked_at <= ttl_s + 20
    assert took <= ttl_s + 20


async def test_without_the_cache_a_revocation_applies_to_the_next_request(
    settings: Settings, tenant: TenantKey, image_server: ImageServer, engine: AsyncEngine
) -> None:
    body = url_body(image_server)
    async with api_process(settings, auth_cache_s=0) as api:
        assert await submit_status(api, tenant, body) == 202
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE api_key SET revoked_at = now()"))
        assert await submit_status(api, tenant, body) == 401


async def test_a_cached_key_never_spends_what_the_database_refuses(
    settings: Settings,
    make_tenant: MakeTenant,
    image_server: ImageServer,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    poor = await make_tenant("poor", credits=15)  # one default request costs 10
    body = url_body(image_server)
    async with api_process(settings, auth_cache_s=LONG_TTL_S) as api:
        assert await submit_status(api, poor, body) == 202
        refused = await api.post("/v2/ic-light", headers=poor.headers, json=body)
        assert refused.status_code == 406, refused.text
        assert refused.json()["code"] == "insufficient_credits"

        rich = await make_tenant("rich", credits=1000)
        async with sessionmaker() as session, session.begin():
            row = await find_tenant(session, rich.name)
            await set_limits(session, row, LimitsUpdate(max_in_flight=1))
        assert await submit_status(api, rich, body) == 202
        busy = await api.post("/v2/ic-light", headers=rich.headers, json=body)
        assert busy.status_code == 429, busy.text
        assert busy.json()["code"] == "too_many_jobs"

        # Suspended behind the cache's back (no NOTIFY): the reservation still refuses it.
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE tenant SET status = :status WHERE name = 'poor'"),
                {"status": TenantStatus.SUSPENDED.value},
            )
        suspended = await api.post("/v2/ic-light", headers=poor.headers, json=body)
        assert suspended.status_code == 403, suspended.text
        assert suspended.json()["code"] == "tenant_suspended"

        async with sessionmaker() as session, session.begin():
            await set_tenant_status(
                session, await find_tenant(session, "poor"), TenantStatus.ACTIVE
            )
    assert await balance_of(engine, poor.tenant_id) == 5
    assert await balance_of(engine, rich.tenant_id) == 990
    assert await job_count(engine) == 2


async def test_concurrent_url_submits_with_one_idempotency_key_make_one_request(
    client: Client, tenant: TenantKey, image_server: ImageServer, engine: AsyncEngine
) -> None:
    # A URL subject runs without a transaction: the lost race is one refused statement.
    headers = {**tenant.headers, "Idempotency-Key": "url-burst"}
    body = url_body(image_server)

    responses = await asyncio.gather(
        *(client.post("/v2/ic-light", headers=headers, json=body) for _ in range(10))
    )

    # The losers wait on the unique index until the winner's statement commits, then replay.
    assert [r.status_code for r in responses] == [202] * 10, [r.text for r in responses]
    assert len({r.json()["request_id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 9
    assert await job_count(engine) == 1
    assert await balance_of(engine, tenant.tenant_id) == 1000 - 10
    replay = await client.post("/v2/ic-light", headers=headers, json=body)
    assert replay.status_code == 202
    assert replay.headers["Idempotent-Replayed"] == "true"


async def test_a_too_long_idempotency_key_is_a_422(client: Client, tenant: TenantKey) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "k" * 256}
    response = await client.post(
        "/v2/ic-light", headers=headers, json={"prompt": "x", "subject_image": "x"}
    )
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["code"] == "validation_error"
    assert payload["field"] == "Idempotency-Key"
    assert "255" in payload["error"]


async def listeners(engine: AsyncEngine) -> set[int]:
    """The backends (pids) of auth-cache listeners whose LISTEN is done."""
    async with engine.connect() as connection:
        pids = await connection.scalars(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'LISTEN%' AND state = 'idle'"
            )
        )
        return set(pids)


async def test_a_lost_listener_empties_the_cache_and_comes_back(
    settings: Settings, make_tenant: MakeTenant, image_server: ImageServer, engine: AsyncEngine
) -> None:
    first, second = await make_tenant("first"), await make_tenant("second")
    body = url_body(image_server)
    async with api_process(settings, auth_cache_s=LONG_TTL_S) as api:
        assert await submit_status(api, first, body) == 202
        lost = await listeners(engine)
        # Postgres drops the connection that listens (a restart, a failover): whatever was
        # announced meanwhile is unknown, so nothing cached may be trusted any more.
        async with engine.begin() as connection:
            killed = await connection.scalar(
                text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                    "FROM pg_stat_activity WHERE datname = current_database() "
                    "AND query LIKE 'LISTEN%'"
                )
            )
            assert killed == 1
            await connection.execute(
                text("UPDATE api_key SET revoked_at = now() WHERE tenant_id = :id"),
                {"id": first.tenant_id},
            )
        await status_within(AT_ONCE_S, 401, lambda: submit_status(api, first, body))

        # The listener reconnects (about a second later) and keys are cached again: a
        # revocation it hears about still applies at once.
        async def reconnected() -> bool:
            return bool(await listeners(engine) - lost)

        await wait_until(reconnected, timeout_s=20, what="the listener reconnects")
        assert await submit_status(api, second, body) == 202
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE api_key SET revoked_at = now() WHERE tenant_id = :id"),
                {"id": second.tenant_id},
            )
        # Without an announcement (raw SQL) the cached key is still served...
        assert await submit_status(api, second, body) == 202
        async with engine.begin() as connection:
            await connection.execute(
                text("SELECT pg_notify('relight_auth_changed', :id)"), {"id": str(second.tenant_id)}
            )
        # ...and the announcement drops it.
        await status_within(AT_ONCE_S, 401, lambda: submit_status(api, second, body))


async def test_the_listener_outlives_an_error_it_did_not_expect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A backend killed mid-LISTEN made asyncpg raise an InternalClientError (seen in the chaos
    test), which ended the listener for good and came out of `stop()` at shutdown. Any error is
    now logged and retried; here, an unparsable port raises a ValueError on every try. (Failed
    before the change: one try, then `stop()` raised the ValueError.)"""
    cache = AuthCache(ttl_s=60, dsn="postgresql://postgres@127.0.0.1:notaport/relight")

    def tries_so_far() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "listener cannot connect" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="relight.tenants.auth_cache"):
        await cache.start()
        # A try at once, another one a second later.
        await wait_until(lambda: len(tries_so_far()) >= 2, timeout_s=20, what="a second try")
        await cache.stop()  # raised the error that ended the listener, before
    tries = tries_so_far()
    assert len(tries) >= 2
    assert all(r.exc_info and r.exc_info[0] is ValueError for r in tries)
