"""Metrics of database changes count what committed, once: `metrics.on_commit` against a real
Postgres session (commit, rollback, savepoints, a session closed without committing)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.core.metrics import on_commit


async def test_recorded_once_when_the_transaction_commits(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    calls: list[str] = []
    async with sessionmaker() as session:
        async with session.begin():
            await session.execute(text("select 1"))
            on_commit(session, lambda: calls.append("a"))
            assert calls == []
        assert calls == ["a"]
        async with session.begin():  # the next transaction does not repeat it
            await session.execute(text("select 1"))
        assert calls == ["a"]


async def test_forgotten_when_the_transaction_rolls_back(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    calls: list[str] = []
    async with sessionmaker() as session:
        await session.execute(text("select 1"))
        on_commit(session, lambda: calls.append("a"))
        await session.rollback()
        await session.execute(text("select 1"))
        await session.commit()
    assert calls == []


async def test_a_savepoint_counts_at_the_outer_commit_and_not_if_rolled_back(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    calls: list[str] = []
    async with sessionmaker() as session:
        await session.execute(text("select 1"))
        on_commit(session, lambda: calls.append("outer"))
        async with session.begin_nested():
            on_commit(session, lambda: calls.append("released"))
        assert calls == []  # releasing a savepoint is not the commit
        nested = await session.begin_nested()
        on_commit(session, lambda: calls.append("rolled back"))
        await nested.rollback()
        await session.commit()
    assert calls == ["outer", "released"]


async def test_a_session_closed_without_commit_forgets(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    calls: list[str] = []
    session = sessionmaker()
    await session.execute(text("select 1"))
    on_commit(session, lambda: calls.append("a"))
    await session.close()
    await session.execute(text("select 1"))
    await session.commit()
    await session.close()
    assert calls == []
