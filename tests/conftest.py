"""Shared fixtures: a migrated Postgres database, a Redis database, the app, a worker.

The schema comes from `alembic upgrade head` (so every run tests the migrations). Tests commit
for real (workers and the API use separate connections), so each test starts from truncated
tables and an empty Redis database instead of a rolled-back transaction.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic import command
from alembic.config import Config
from arq.connections import ArqRedis, RedisSettings, create_pool
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api.app import create_app
from relight.core.config import Settings
from relight.core.db import create_engine, create_sessionmaker
from relight.credits.service import audit_ledger
from relight.jobs.queue import deserialize_job, serialize_job
from relight.tenants.service import create_api_key, create_tenant
from tests.fakes.image_server import ImageServer
from worker.settings import build_worker

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PG_SERVER = os.environ.get("RELIGHT_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
# A database of its own per run, so two runs on one machine (a developer's and CI's) never meet.
TEST_DATABASE = os.environ.get("RELIGHT_TEST_DATABASE", f"relight_test_{uuid.uuid4().hex[:10]}")
TEST_REDIS_URL = os.environ.get("RELIGHT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


# The tiers, from the fixtures a test asks for (directly or not), so nobody marks a test by
# hand. `server`: it needs Postgres or Redis, or a process that does: `settings` holds the
# test servers' addresses (a test of configuration alone builds its own `Settings`), and every
# fixture that connects to them depends on it. `slow`: it loads a model (seconds of CPU) or
# carries the mark itself (it runs a process of its own). `fast`: everything else, the unit
# tests `make test-fast` runs.
SERVER_FIXTURES = frozenset({"settings", "migrated", "engine", "redis"})
SLOW_FIXTURES = frozenset({"tiny_model_dir", "tiny_fc_and_fbc_model_dir"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "server: needs Postgres or Redis (set from the fixtures)")
    config.addinivalue_line("markers", "fast: needs no server, not slow (set): make test-fast")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SERVER_FIXTURES:
            item.add_marker(pytest.mark.server)
        elif fixtures & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
        elif item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.fast)


async def drop_database(name: str) -> None:
    connection = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def recreate_database(name: str) -> None:
    await drop_database(name)
    connection = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


def alembic_config(database_url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", database_url)
    config.attributes["configure_logger"] = False
    return config


def database_url(name: str) -> str:
    return PG_SERVER.replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        environment="test",
        database_url=database_url(TEST_DATABASE),
        database_pool_size=5,
        redis_url=TEST_REDIS_URL,
        queue_name=f"relight:test:{uuid.uuid4().hex[:8]}",
        storage_dir=tmp_path_factory.mktemp("storage"),
        secret_key="test-secret",
        # The fake servers (image server, webhook receivers) listen on 127.0.0.1.
        egress_allowlist="127.0.0.1",
        webhook_retry_schedule="0.05,0.05,0.05",
        webhook_timeout_s=1.5,
        webhook_sweep_interval_s=1,
        max_input_bytes=1536 * 1024,
        max_input_pixels=4_000_000,
        fetch_timeout_s=2.0,
        sync_timeout_s=20.0,
        worker_poll_delay_s=0.01,
        retry_backoff_s=0.05,
        job_max_attempts=3,
        local_engine_threads=2,
        # Workers in tests serve no metrics unless a test gives them a port of their own.
        worker_metrics_port=0,
    )


@pytest.fixture(scope="session")
def migrated(settings: Settings) -> Iterator[None]:
    asyncio.run(recreate_database(TEST_DATABASE))
    command.upgrade(alembic_config(settings.database_url), "head")
    yield
    asyncio.run(drop_database(TEST_DATABASE))


@pytest.fixture(scope="session")
async def engine(settings: Settings, migrated: None) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


async def delete_run_keys(redis: Redis, settings: Settings) -> None:
    """Remove this run's queue and channels; job keys carry unique ids and expire on their own."""
    keys = [key async for key in redis.scan_iter(match=f"{settings.queue_name}*")]
    if keys:
        await redis.delete(*keys)


@pytest.fixture(scope="session")
async def redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    """Redis as the api and the worker see it: arq's client (it can enqueue, too)."""
    client = await create_pool(
        RedisSettings.from_dsn(settings.redis_url),
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        default_queue_name=settings.queue_name,
    )
    yield client
    await delete_run_keys(client, settings)
    await client.aclose()


@pytest.fixture
async def clean_state(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
    settings: Settings,
) -> AsyncIterator[None]:
    """Empty tables and queue before the test; after it, every balance must equal its ledger."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "TRUNCATE tenant, api_key, job, job_output, credit_entry, webhook_delivery, "
                "webhook_attempt RESTART IDENTITY CASCADE"
            )
        )
    await delete_run_keys(redis, settings)
    yield
    async with sessionmaker() as session:
        discrepancies = await audit_ledger(session)
    assert discrepancies == [], f"balance differs from the ledger: {discrepancies}"


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def app(settings: Settings, clean_state: None) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@dataclass(frozen=True)
class TenantKey:
    tenant_id: uuid.UUID
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.key}


MakeTenant = Callable[..., Awaitable[TenantKey]]


@pytest.fixture
def make_tenant(sessionmaker: async_sessionmaker[AsyncSession], clean_state: None) -> MakeTenant:
    async def make(name: str | None = None, credits: int = 1000) -> TenantKey:
        name = name or f"tenant-{uuid.uuid4().hex[:8]}"
        async with sessionmaker() as session, session.begin():
            tenant = await create_tenant(session, name, credits)
            created = await create_api_key(session, tenant, "test")
        return TenantKey(tenant_id=tenant.id, name=name, key=created.key)

    return make


@pytest.fixture
async def tenant(make_tenant: MakeTenant) -> TenantKey:
    return await make_tenant("acme")


RunWorker = Callable[[], Awaitable[None]]


@pytest.fixture
def run_worker(settings: Settings, engine: AsyncEngine) -> RunWorker:
    """Run a burst worker until the queue is empty (retries included)."""

    async def run() -> None:
        worker = build_worker(settings, burst=True, poll_delay=0, handle_signals=False)
        try:
            await worker.async_run()
        finally:
            await worker.close()

    return run


@pytest.fixture
async def background_worker(settings: Settings, engine: AsyncEngine) -> AsyncIterator[None]:
    """A worker polling in the background for the test's duration (for synchronous calls)."""
    worker = build_worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await worker.close()


def example_bytes(name: str = "chelsea.png") -> bytes:
    return (EXAMPLES / name).read_bytes()


def example_base64(name: str = "chelsea.png") -> str:
    return base64.b64encode(example_bytes(name)).decode()
