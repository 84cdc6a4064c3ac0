"""One after-commit mechanism: `relight/core/unit_of_work.py`. Read from the source, no other module
hooks a session's transaction events or commits a session itself (every commit goes through a
`UnitOfWork`, which runs the callbacks); and against a real Postgres, what a `UnitOfWork` does
with `async` callbacks (the metrics' plain ones are `tests/observability/test_on_commit.py`'s).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.core.unit_of_work import UnitOfWork, after_commit, unit_of_work
from tests.architecture.test_query_layer import sources
from tests.conftest import ROOT

HOME = Path("relight/core/unit_of_work.py")
TRANSACTION_EVENTS = {"after_commit", "after_soft_rollback", "after_transaction_end"}


def commits_and_hooks(source: str, path: Path) -> list[str]:
    """`path:line: what` for each session commit (`session.begin()`, `session.commit()`) and
    each listener of a session's transaction events in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        receiver = node.func.value
        name = receiver.id if isinstance(receiver, ast.Name) else getattr(receiver, "attr", "")
        if node.func.attr in ("begin", "commit") and name.endswith("session"):
            found.append(f"{path}:{node.lineno}: {name}.{node.func.attr}()")
        if node.func.attr in ("listens_for", "listen") and any(
            isinstance(arg, ast.Constant) and arg.value in TRANSACTION_EVENTS for arg in node.args
        ):
            found.append(f"{path}:{node.lineno}: listens to a transaction event")
    return found


def test_only_the_unit_of_work_commits_and_hooks_transactions() -> None:
    home = commits_and_hooks((ROOT / HOME).read_text(), HOME)
    assert len([line for line in home if "listens" in line]) == 3  # the rule still finds them
    elsewhere = [
        found
        for path in sources(ROOT)
        if path != HOME
        for found in commits_and_hooks((ROOT / path).read_text(), path)
    ]
    assert elsewhere == [], "commit through relight.core.unit_of_work (unit_of_work, UnitOfWork)"


async def test_async_callbacks_run_after_the_commit_in_order(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    calls: list[str] = []

    async def record(name: str) -> None:
        calls.append(name)

    async with unit_of_work(sessionmaker) as uow:
        await uow.session.execute(text("select 1"))
        uow.after_commit(lambda: record("first"))
        after_commit(uow.session, lambda: calls.append("plain"))
        uow.after_commit(lambda: record("second"))
        assert calls == []
    assert calls == ["plain", "first", "second"]


async def test_async_callbacks_are_dropped_on_rollback_and_with_their_savepoint(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    calls: list[str] = []

    async def record(name: str) -> None:
        calls.append(name)

    async def work_that_raises() -> None:
        async with unit_of_work(sessionmaker) as uow:
            await uow.session.execute(text("select 1"))
            uow.after_commit(lambda: record("rolled back"))
            raise RuntimeError

    with pytest.raises(RuntimeError):
        await work_that_raises()
    async with sessionmaker() as session:
        uow = UnitOfWork(session)
        await session.execute(text("select 1"))
        uow.after_commit(lambda: record("kept"))
        nested = await session.begin_nested()
        uow.after_commit(lambda: record("savepoint rolled back"))
        await nested.rollback()
        await uow.commit()
    assert calls == ["kept"]


async def test_a_failing_callback_raises_after_the_commit_and_the_rest_are_dropped(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    calls: list[str] = []

    async def fail() -> None:
        raise ConnectionError("redis is down")

    async def record() -> None:
        calls.append("after")

    async def work() -> None:
        async with unit_of_work(sessionmaker) as uow:
            await uow.session.execute(text("select 1"))
            uow.after_commit(lambda: calls.append("committed"))
            uow.after_commit(fail)
            uow.after_commit(record)

    with pytest.raises(ConnectionError):
        await work()
    assert calls == ["committed"]
