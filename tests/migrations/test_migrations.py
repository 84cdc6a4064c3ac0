"""The migrations on a scratch database: up, down, up again, and the ORM matches the result."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from relight.core import models  # noqa: F401  (registers the tables on the metadata)
from relight.core.db import Base
from tests.conftest import alembic_config, database_url, drop_database, recreate_database

pytestmark = pytest.mark.slow

SCRATCH = f"relight_migration_check_{uuid.uuid4().hex[:8]}"
# At least these; later migrations add more (the ORM metadata names them all).
APP_TABLES = {"tenant", "api_key", "job", "job_output"}


def orm_tables() -> set[str]:
    return set(Base.metadata.tables)


def asyncpg_url(url: str) -> str:
    """A SQLAlchemy `postgresql+asyncpg://` URL in the form asyncpg itself connects with."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def public_tables(url: str) -> set[str]:
    connection = await asyncpg.connect(asyncpg_url(url))
    try:
        rows = await connection.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await connection.close()
    return {row["table_name"] for row in rows}


async def current_revision(url: str) -> str | None:
    connection = await asyncpg.connect(asyncpg_url(url))
    try:
        revision: str | None = await connection.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await connection.close()
    return revision


async def schema_diff(url: str) -> list[Any]:
    """What autogenerate would change to bring the database to the ORM metadata."""

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))

    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


@pytest.fixture
async def scratch() -> AsyncIterator[str]:
    await recreate_database(SCRATCH)
    try:
        yield database_url(SCRATCH)
    finally:
        await drop_database(SCRATCH)


async def upgrade(config: Config, revision: str) -> None:
    # alembic's env.py calls asyncio.run, which cannot nest in the test's running loop.
    await asyncio.to_thread(command.upgrade, config, revision)


async def downgrade(config: Config, revision: str) -> None:
    await asyncio.to_thread(command.downgrade, config, revision)


async def test_upgrade_downgrade_upgrade_round_trip(scratch: str) -> None:
    config = alembic_config(scratch)
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    assert await public_tables(scratch) == set()

    await upgrade(config, "head")
    migrated = await public_tables(scratch)
    assert migrated >= APP_TABLES | {"alembic_version"}
    assert migrated == orm_tables() | {"alembic_version"}
    assert await current_revision(scratch) == head

    await downgrade(config, "base")
    assert await public_tables(scratch) == {"alembic_version"}
    assert await current_revision(scratch) is None

    await upgrade(config, "head")
    assert await public_tables(scratch) == migrated
    assert await current_revision(scratch) == head
    assert await schema_diff(scratch) == []


def test_every_revision_chains_to_one_head() -> None:
    script = ScriptDirectory.from_config(alembic_config(database_url(SCRATCH)))
    assert len(script.get_heads()) == 1
    revisions = list(script.walk_revisions())
    assert revisions
    assert revisions[-1].down_revision is None


async def test_orm_metadata_matches_the_migrated_schema(scratch: str) -> None:
    await upgrade(alembic_config(scratch), "head")

    assert orm_tables() >= APP_TABLES
    assert await schema_diff(scratch) == []
