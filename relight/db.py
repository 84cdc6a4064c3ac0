"""Async engine and session factories, the declarative Base with a naming convention, and
`ping`, the readiness check of the database (the one statement that needs no session)."""

from __future__ import annotations

from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from relight.config import Settings

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
    without it a connection Postgres dropped fails its first use, which invalidates the pool."""
    size = pool_size or settings.database_pool_size
    engine = create_async_engine(
        settings.database_url,
        pool_size=size,
        max_overflow=settings.database_pool_size if max_overflow is None else max_overflow,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
    )
    event.listen(engine.sync_engine, "handle_error", _broken_protocol_is_a_disconnect)
    return engine


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
