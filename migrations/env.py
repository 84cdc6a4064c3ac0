"""Alembic environment: async engine, URL from Relight's settings unless one is given."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from relight.core import models  # noqa: F401  (registers the tables on the metadata)
from relight.core.config import Settings
from relight.core.db import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata

# Every api and worker pod runs `alembic upgrade head` in an init container, so several may
# start at once on the same database: a session-level advisory lock (a constant key, "relight"
# in ASCII) makes them take turns; whoever comes later reads the version table after the first
# has committed and finds nothing to do.
MIGRATION_LOCK_KEY = 0x72656C69676874


def database_url() -> str:
    explicit = config.get_main_option("sqlalchemy.url")
    return explicit or Settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    # The lock outlives this transaction (it is the session's); ending it lets alembic run and
    # commit its own.
    connection.commit()
    try:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()


async def run_migrations_online() -> None:
    engine = create_async_engine(database_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run_sync)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
