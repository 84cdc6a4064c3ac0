"""What must happen only once a transaction committed: the one after-commit mechanism.

Anything that changes the database and owes the world a side effect once (and only if) the
change is durable registers it with `after_commit(session, callback)`: the api's enqueue of a
submitted job, the announcement of a job's move (`lifecycle.announce`), the copy of a tenant's
weight to Redis, a redelivery's enqueue, the metrics of what committed, an auth-cache drop.

- A callback is tied to the transaction it was registered in, savepoints included: if that
  savepoint or the transaction rolls back, or the session closes without committing, it is
  dropped; releasing a savepoint is not the commit.
- At the outermost commit every callback of that transaction is called, in the order they were
  registered. A plain function (a metric, a cache drop) has then done its work, whoever
  committed the session. An `async` one has only made its coroutine: the `UnitOfWork` that
  committed awaits each, in order, as its `commit()` returns (a Redis round trip cannot run
  inside SQLAlchemy's synchronous commit hook). So code with async side effects commits through
  a `UnitOfWork` (`unit_of_work(sessionmaker)`, or the api's per-request one).

The buffer lives in the session's `info`, so a repository or service that holds only the
session can register, and the session's transaction events keep it honest.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction

AfterCommit = Callable[[], Awaitable[None] | None]

_PENDING = "relight_after_commit_pending"
_COMMITTED = "relight_after_commit_committed"
Pending = list[tuple[SessionTransaction, AfterCommit]]


def after_commit(session: AsyncSession | Session, callback: AfterCommit) -> None:
    """Call `callback` once the session's current transaction commits; forget it if the
    transaction (or the savepoint it was made in) rolls back, or if the session closes without
    committing. An `async` callback is awaited by the `UnitOfWork` that commits."""
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    transaction = sync.get_nested_transaction() or sync.get_transaction()
    if transaction is None:  # not in a transaction: nothing can undo it
        _call(sync, callback)
        return
    pending: Pending = sync.info.setdefault(_PENDING, [])
    pending.append((transaction, callback))


def _call(session: Session, callback: AfterCommit) -> None:
    result = callback()
    if inspect.isawaitable(result):
        committed: list[Awaitable[None]] = session.info.setdefault(_COMMITTED, [])
        committed.append(result)


def _within(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


@event.listens_for(Session, "after_commit")
def _run_committed(session: Session) -> None:
    # A savepoint's release also fires after_commit; only the outermost commit is final.
    if session.in_nested_transaction():
        return
    pending: Pending = session.info.pop(_PENDING, [])
    for _, callback in pending:
        _call(session, callback)


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    pending: Pending | None = session.info.get(_PENDING)
    if pending:
        pending[:] = [
            (transaction, callback)
            for transaction, callback in pending
            if not _within(transaction, previous_transaction)
        ]


@event.listens_for(Session, "after_transaction_end")
def _forget_unfinished(session: Session, transaction: SessionTransaction) -> None:
    # The outermost transaction ended: what its commit did not call never will be (a session
    # closed without committing does not roll back through after_soft_rollback).
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


class UnitOfWork:
    """A session whose commit is followed by its after-commit callbacks, `async` ones awaited.

    `commit()` commits, then awaits the coroutines of the committed callbacks in order (the
    first that raises is raised, the rest are dropped); `rollback()` rolls back and drops
    whatever was registered."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def after_commit(self, callback: AfterCommit) -> None:
        """`after_commit(self.session, callback)`."""
        after_commit(self.session, callback)

    async def commit(self) -> None:
        # A session that never began (autocommit statements on borrowed connections) has
        # nothing to commit: its callbacks ran as they were registered.
        if self.session.in_transaction():
            await self.session.commit()
        await self._run_committed()

    async def rollback(self) -> None:
        await self.session.rollback()
        _close(self.session.info.pop(_COMMITTED, []))

    async def _run_committed(self) -> None:
        committed: list[Awaitable[None]] = self.session.info.pop(_COMMITTED, [])
        for index, awaitable in enumerate(committed):
            try:
                await awaitable
            except BaseException:
                _close(committed[index + 1 :])
                raise


def _close(awaitables: list[Awaitable[None]]) -> None:
    """Drop coroutines that will not run (without the warning that they were never awaited)."""
    for awaitable in awaitables:
        if isinstance(awaitable, Coroutine):
            coroutine: Coroutine[Any, Any, None] = awaitable
            coroutine.close()


@asynccontextmanager
async def unit_of_work(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[UnitOfWork]:
    """A new session for the block: committed when the block ends (then its after-commit
    callbacks run), rolled back if it raises."""
    async with sessionmaker() as session:
        uow = UnitOfWork(session)
        try:
            yield uow
        except BaseException:
            await uow.rollback()
            raise
        await uow.commit()
