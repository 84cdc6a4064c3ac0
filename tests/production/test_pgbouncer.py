"""Behind a real PgBouncer in transaction pooling (RELIGHT_DATABASE_POOLER=transaction):
concurrent submits are all accepted, a worker runs jobs to the end with exact books, and the
auth cache hears revocations on its direct LISTEN connection.

Without the setting, asyncpg's numbered prepared statements meet on PgBouncer's shared server
connections (`prepared statement "__asyncpg_stmt_6__" does not exist`, or `already exists`) and
most of the concurrent submits answer 500.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from relight.core.config import Settings
from relight.core.db import create_engine, create_sessionmaker, listen_dsn
from relight.tenants.service import revoke_api_key
from tests.conftest import MakeTenant
from tests.fakes.image_server import ImageServer
from tests.helpers import fast_body
from tests.production.conftest import Books, PgBouncer, api_client, assert_completed_once
from tests.waiting import wait_until
from worker.settings import build_worker

pytestmark = pytest.mark.slow

CONCURRENT_SUBMITS = 48


async def wait_until_refused(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]
) -> None:
    """Submit until the revoked key is refused (401): the revocation reached the cache. Bounded
    by `wait_until`'s default, which only a revocation that never arrives runs into (the 5 s
    bound this had is within a loaded machine's reach)."""

    async def refused() -> bool:
        response = await client.post("/v2/ic-light", headers=headers, json=body)
        return response.status_code == 401

    await wait_until(refused, what="the revocation reaches the auth cache")


def url_body(image_server: ImageServer) -> dict[str, Any]:
    """A request whose subject is a URL (the worker would fetch it): submit stores nothing."""
    return {"prompt": "cat, soft window light", "subject_image": image_server.url("/cat.png")}


async def test_concurrent_submits_through_pgbouncer_are_all_accepted(
    pooled_settings: Settings,
    make_tenant: MakeTenant,
    image_server: ImageServer,
    books: Books,
) -> None:
    tenant = await make_tenant(credits=100_000)
    await books.lift_limits(tenant.tenant_id)
    body = url_body(image_server)
    async with api_client(pooled_settings) as client:
        answers = await asyncio.gather(
            *(
                client.post("/v2/ic-light", headers=tenant.headers, json=body)
                for _ in range(CONCURRENT_SUBMITS)
            )
        )
        statuses = [answer.status_code for answer in answers]
        assert statuses == [202] * CONCURRENT_SUBMITS, (
            Counter(statuses),
            {a.text for a in answers if a.is_error},
        )
        # Reads through the pooler too: every request is there, as its owner sees it.
        ids = [answer.json()["request_id"] for answer in answers]
        reads = await asyncio.gather(
            *(client.get(f"/v2/requests/{i}", headers=tenant.headers) for i in ids)
        )
        assert [read.status_code for read in reads] == [200] * CONCURRENT_SUBMITS
    jobs = await books.jobs(ids)
    assert len(jobs) == CONCURRENT_SUBMITS
    assert all(job.status == "queued" and job.reserves == 1 for job in jobs)
    balance, ledger = await books.balance_and_ledger(tenant.tenant_id)
    assert balance == ledger == 100_000 - sum(job.credits_reserved for job in jobs)


async def test_session_pooling_needs_no_change_and_listens_through_the_pooler(
    settings: Settings,
    session_pgbouncer: PgBouncer,
    make_tenant: MakeTenant,
    image_server: ImageServer,
    books: Books,
) -> None:
    """`session`: statement caches on, LISTEN through the pooler itself (no listen URL)."""
    pooled = settings.model_copy(
        update={
            "database_url": session_pgbouncer.url(),
            "database_pooler": "session",
            "auth_cache_s": 300.0,
        }
    )
    assert f":{session_pgbouncer.port}/" in listen_dsn(pooled)
    tenant = await make_tenant(credits=100_000)
    await books.lift_limits(tenant.tenant_id)
    body = url_body(image_server)
    async with api_client(pooled) as client:
        answers = await asyncio.gather(
            *(
                client.post("/v2/ic-light", headers=tenant.headers, json=body)
                for _ in range(CONCURRENT_SUBMITS)
            )
        )
        statuses = [answer.status_code for answer in answers]
        assert statuses == [202] * CONCURRENT_SUBMITS, Counter(statuses)

        engine = create_engine(pooled, pool_size=1)
        try:
            async with create_sessionmaker(engine)() as session, session.begin():
                await revoke_api_key(session, tenant.key)
        finally:
            await engine.dispose()
        await wait_until_refused(client, tenant.headers, body)


async def test_a_worker_behind_pgbouncer_runs_jobs_to_completion_with_exact_books(
    pooled_settings: Settings, make_tenant: MakeTenant, books: Books
) -> None:
    tenant = await make_tenant(credits=10_000)
    async with api_client(pooled_settings) as client:
        answers = await asyncio.gather(
            *(
                client.post("/v2/ic-light", headers=tenant.headers, json=fast_body(seed=n))
                for n in range(12)
            )
        )
    assert [answer.status_code for answer in answers] == [202] * 12
    ids = [answer.json()["request_id"] for answer in answers]

    worker = build_worker(pooled_settings, burst=True, poll_delay=0, handle_signals=False)
    try:
        await asyncio.wait_for(worker.async_run(), timeout=120)
    finally:
        await worker.close()

    jobs = await books.wait_finished(ids, timeout_s=60)
    assert_completed_once(jobs)
    balance, ledger = await books.balance_and_ledger(tenant.tenant_id)
    assert balance == ledger == 10_000 - sum(job.credits_charged for job in jobs)


async def test_the_auth_cache_hears_a_revocation_on_its_direct_listen_connection(
    pooled_settings: Settings,
    make_tenant: MakeTenant,
    image_server: ImageServer,
) -> None:
    tenant = await make_tenant(credits=10_000)
    body = url_body(image_server)
    settings = pooled_settings.model_copy(update={"auth_cache_s": 300.0})
    # The revocation goes through the pooler too: its NOTIFY is part of its transaction.
    engine = create_engine(pooled_settings, pool_size=1)
    try:
        async with client_and_cached_key(settings, tenant.headers, body) as client:
            async with create_sessionmaker(engine)() as session, session.begin():
                await revoke_api_key(session, tenant.key)

            await wait_until_refused(client, tenant.headers, body)
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def client_and_cached_key(
    settings: Settings, headers: dict[str, str], body: dict[str, Any]
) -> AsyncIterator[httpx.AsyncClient]:
    """An api client whose auth cache holds the key (its first submit answered 202)."""
    async with api_client(settings) as client:
        first = await client.post("/v2/ic-light", headers=headers, json=body)
        assert first.status_code == 202, first.text
        yield client


def test_the_listen_connection_is_the_direct_one(
    pooled_settings: Settings, pgbouncer: PgBouncer
) -> None:
    assert f":{pgbouncer.port}/" in pooled_settings.database_url
    assert f":{pgbouncer.port}/" not in listen_dsn(pooled_settings)
    assert listen_dsn(pooled_settings).startswith("postgresql://")


def test_a_transaction_pooler_without_a_listen_url_is_refused() -> None:
    with pytest.raises(ValueError, match="RELIGHT_DATABASE_LISTEN_URL"):
        Settings(database_pooler="transaction", auth_cache_s=5)
    # Without the cache nothing listens.
    Settings(database_pooler="transaction", auth_cache_s=0)
    assert listen_dsn(Settings()) == "postgresql://postgres@127.0.0.1:5432/relight"


async def test_no_prepared_statement_outlives_its_transaction(
    pooled_settings: Settings, pgbouncer: PgBouncer
) -> None:
    """Many transactions on one client connection, each on whatever server connection the
    pooler lends: none fails on a statement another left behind."""
    engine = create_engine(pooled_settings, pool_size=2, max_overflow=0)
    try:

        async def one(n: int) -> int:
            async with engine.begin() as connection:
                value = await connection.scalar(text("SELECT CAST(:n AS int) + 1"), {"n": n})
                return int(value or 0)

        results = await asyncio.gather(*(one(n) for n in range(200)))
    finally:
        await engine.dispose()
    assert results == [n + 1 for n in range(200)]
