"""Async engine and session factories, the declarative Base with a naming convention, and
`ping`, the readiness check of the database (the one statement that needs no session)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import MetaData, event, make_url, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import QueuePool

from relight.core.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def create_engine(
    settings: Settings,
    *,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    pre_ping: bool = True,
) -> AsyncEngine:
    """The async engine. `max_overflow` defaults to the pool size (a burst may open as many
    connections again, closed when returned); the API passes 0 for a fixed pool. `pre_ping`
    checks each connection as it leaves the pool (with asyncpg: BEGIN, a no-op, ROLLBACK);
    without it a connection Postgres dropped fails its first use, which invalidates the pool.
    A checkout that finds every connection in use waits `RELIGHT_DATABASE_POOL_TIMEOUT_S`, then
    raises `sqlalchemy.exc.TimeoutError` (the api answers 503 `database_busy`)."""
    size = pool_size or settings.database_pool_size
    engine = create_async_engine(
        settings.database_url,
        pool_size=size,
        max_overflow=settings.database_pool_size if max_overflow is None else max_overflow,
        pool_pre_ping=pre_ping,
        pool_timeout=settings.database_pool_timeout_s,
        pool_recycle=1800,
        connect_args=connect_args(settings),
    )
    event.listen(engine.sync_engine, "handle_error", _broken_protocol_is_a_disconnect)
    return engine


def connect_args(settings: Settings) -> dict[str, Any]:
    """asyncpg connection arguments for `RELIGHT_DATABASE_POOLER`.

    Behind a transaction pooler consecutive transactions of one client connection run on
    different server connections, so no server-side prepared statement may outlive its
    transaction: asyncpg's statement cache and SQLAlchemy's are off, and each statement is
    prepared under a name of its own (asyncpg's per-connection counter would collide with the
    names another client left on that server connection). Each statement then costs a prepare
    round trip more. A session pooler keeps a client on one server connection, and resets it
    (`DISCARD ALL`) before handing it to another: the caches stay on."""
    if settings.database_pooler != "transaction":
        return {}
    return {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": _unique_statement_name,
    }


def autocommit_engine(engine: AsyncEngine, settings: Settings) -> AsyncEngine:
    """`engine` for single statements that need no transaction (no BEGIN and COMMIT round
    trips). Behind a transaction pooler it is `engine` itself, in transactions: outside one the
    pooler may run a statement's prepare and its execution on different server connections
    (`prepared statement … does not exist`)."""
    if settings.database_pooler == "transaction":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def _unique_statement_name() -> str:
    return f"__relight_{uuid.uuid4().hex}__"


def listen_dsn(settings: Settings) -> str:
    """The asyncpg DSN of a connection that may LISTEN: `RELIGHT_DATABASE_LISTEN_URL`, else the
    main URL (a transaction pooler would drop the registration with the transaction)."""
    url = make_url(settings.database_listen_url or settings.database_url)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _broken_protocol_is_a_disconnect(context: ExceptionContext) -> None:
    """asyncpg sometimes reports a connection the server terminated as an internal protocol
    error ("cannot switch to state …") rather than as closed; SQLAlchemy does not count that as
    a disconnect and would hand the broken connection out again. Mark it as one, so the pool
    drops it and the error says `connection_invalidated` (the API answers 503, not 500)."""
    original = context.original_exception
    if type(original).__name__ == "InternalClientError" and "cannot switch to state" in str(
        original
    ):
        context.is_disconnect = True


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def ping(engine: AsyncEngine) -> None:
    """`SELECT 1` on a connection of the pool: raises when the database does not answer."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


def pool_saturated(engine: AsyncEngine) -> str:
    """`busy: all N connections in use` when every connection of `engine`'s fixed pool is
    checked out (a request waiting for one waits for another request, not for Postgres);
    else ""."""
    pool = engine.pool
    if isinstance(pool, QueuePool) and pool.checkedin() == 0 and pool.checkedout() >= pool.size():
        return f"busy: all {pool.checkedout()} connections in use"
    return ""
