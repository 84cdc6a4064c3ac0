"""Every query on credits: the balance movements (each one statement), the job reservation that
inserts the job with its price taken, and the ledger reads.

Every movement is one statement (a data-modifying CTE: the balance UPDATE, then its ledger entry
from the UPDATE's RETURNING), so each is a single round trip. The statements are built once
with bound parameters; `change` is the signed amount added to the balance and recorded."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import asyncpg
from sqlalchemy import (
    CTE,
    BigInteger,
    Insert,
    Row,
    String,
    Text,
    Update,
    Uuid,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.sql.dml import ReturningInsert
from sqlalchemy.util import greenlet_spawn

from relight.core.ids import uuid7
from relight.core.models import CreditEntry, CreditKind, Job, Tenant, TenantStatus

# Bounds that keep every sum far inside Postgres' bigint.
MAX_MOVEMENT = 10**12
MAX_BALANCE = 10**15

_TENANT_ID = bindparam("tenant_id", type_=Uuid())
_CHANGE = bindparam("change", type_=BigInteger())


def entry_from(moved: CTE) -> Insert:
    """The ledger entry of a balance movement whose new balance is `moved`'s one row."""
    return insert(CreditEntry).from_select(
        ["id", "tenant_id", "job_id", "kind", "amount", "balance_after", "reason"],
        select(
            bindparam("entry_id", type_=Uuid()),
            _TENANT_ID,
            bindparam("job_id", type_=Uuid()),
            bindparam("kind", type_=String()),
            _CHANGE,
            moved.c.credit_balance,
            bindparam("reason", type_=Text()),
        ),
    )


def _movement(balance_update: Update) -> ReturningInsert[uuid.UUID, int]:
    moved = balance_update.returning(Tenant.credit_balance).cte("moved")
    return entry_from(moved).returning(CreditEntry.id, CreditEntry.balance_after)


# A job's price and an in-flight slot, only from an active tenant that can afford both
# (`reserve_and_insert_job` runs it, with the job's insert, in one statement).
RESERVE_BALANCE = (
    update(Tenant)
    .where(
        Tenant.id == _TENANT_ID,
        Tenant.status == TenantStatus.ACTIVE.value,
        Tenant.credit_balance + _CHANGE >= 0,
        Tenant.active_jobs < Tenant.max_in_flight,
    )
    .values(credit_balance=Tenant.credit_balance + _CHANGE, active_jobs=Tenant.active_jobs + 1)
)
# A job ends (charge or refund): credits back and its in-flight slot free.
SETTLE = _movement(
    update(Tenant)
    .where(Tenant.id == _TENANT_ID)
    .values(credit_balance=Tenant.credit_balance + _CHANGE, active_jobs=Tenant.active_jobs - 1)
)
# A grant or an adjustment, keeping the balance within bounds.
ADJUST = _movement(
    update(Tenant)
    .where(
        Tenant.id == _TENANT_ID,
        Tenant.credit_balance + _CHANGE >= 0,
        Tenant.credit_balance + _CHANGE <= MAX_BALANCE,
    )
    .values(credit_balance=Tenant.credit_balance + _CHANGE)
)


async def move_with_entry(
    session: AsyncSession,
    movement: ReturningInsert[uuid.UUID, int],
    tenant_id: uuid.UUID,
    kind: CreditKind,
    change: int,
    *,
    job_id: uuid.UUID | None = None,
    reason: str | None = None,
) -> tuple[uuid.UUID, int] | None:
    """Run one of the movements above (`SETTLE`, `ADJUST`); `(entry id, new balance)`, or None
    when its UPDATE matched no tenant row."""
    values = {
        "entry_id": uuid7(),
        "tenant_id": tenant_id,
        "job_id": job_id,
        "kind": kind.value,
        "change": change,
        "reason": reason,
    }
    # Core execution on the session's connection (same transaction): an ORM `execute` of an
    # insert with parameters would take it for a bulk insert of entities.
    connection = await session.connection()
    row = (await connection.execute(movement, values)).one_or_none()
    return None if row is None else (row.id, row.balance_after)


async def refusal_state(session: AsyncSession, tenant_id: uuid.UUID) -> Row[str, int, int, int]:
    """What decides why a reservation was refused: the tenant's status, balance and jobs in
    flight against its limit."""
    return (
        await session.execute(
            select(
                Tenant.status, Tenant.credit_balance, Tenant.active_jobs, Tenant.max_in_flight
            ).where(Tenant.id == tenant_id)
        )
    ).one()


async def lock_refusal_state(
    session: AsyncSession, tenant_id: uuid.UUID
) -> Row[str, int, int, int] | None:
    """`refusal_state`, with the tenant's row locked until the caller's transaction ends, so
    that what it shows still holds for the reservations the transaction makes next."""
    return (
        await session.execute(
            select(Tenant.status, Tenant.credit_balance, Tenant.active_jobs, Tenant.max_in_flight)
            .where(Tenant.id == tenant_id)
            .with_for_update()
        )
    ).one_or_none()


async def get_entry(session: AsyncSession, entry_id: uuid.UUID) -> CreditEntry | None:
    return await session.get(CreditEntry, entry_id)


async def get_balance(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    balance = await session.scalar(select(Tenant.credit_balance).where(Tenant.id == tenant_id))
    return int(balance or 0)


async def list_entries(
    session: AsyncSession, tenant_id: uuid.UUID, *, limit: int, before: uuid.UUID | None = None
) -> list[CreditEntry]:
    """The tenant's ledger, newest first; entry ids are time-ordered, so the id is the cursor."""
    query = select(CreditEntry).where(CreditEntry.tenant_id == tenant_id)
    if before is not None:
        query = query.where(CreditEntry.id < before)
    return list((await session.scalars(query.order_by(CreditEntry.id.desc()).limit(limit))).all())


async def ledger_discrepancies(session: AsyncSession) -> list[tuple[uuid.UUID, str, int, int]]:
    """`(tenant id, name, balance, ledger sum)` of every tenant whose balance differs from the
    sum of its ledger entries."""
    ledger_sum = func.coalesce(
        select(func.sum(CreditEntry.amount))
        .where(CreditEntry.tenant_id == Tenant.id)
        .scalar_subquery(),
        0,
    )
    rows = await session.execute(
        select(Tenant.id, Tenant.name, Tenant.credit_balance, ledger_sum).where(
            Tenant.credit_balance != ledger_sum
        )
    )
    # sum() of a bigint is NUMERIC in Postgres: back to int.
    return [(row[0], row[1], int(row[2]), int(row[3])) for row in rows]


# --- the reservation: the job inserted from the balance movement's row ------------------------

_JOB_TABLE = Job.metadata.tables[Job.__tablename__]

# What a submit sets; every other column takes its default. `id` and `tenant_id` are the
# reservation's `job_id` and `tenant_id` parameters, so the job and its ledger entry agree.
SUBMITTED_COLUMNS = [
    "created_at",
    "status",
    "params",
    "input_url",
    "input_storage_key",
    "background_url",
    "background_storage_key",
    "seed",
    "backend_requested",
    "credits_reserved",
    "idempotency_key",
    "request_hash",
    "webhook_url",
    "webhook_events",
    "http_request_id",
    "batch_id",
    "priority",
    "deadline_at",
    "api_key_id",
]
# What a job built without them brings for the columns added since the first submits (a batch,
# a lane, a deadline, the key that submitted it): the columns' own defaults.
_SUBMITTED_DEFAULTS: dict[str, Any] = {
    "batch_id": None,
    "priority": "normal",
    "deadline_at": None,
    "api_key_id": None,
}

# The columns whose values the job brings; RETURNING reads back only the others.
_SENT = frozenset(["id", "tenant_id", *SUBMITTED_COLUMNS])


def _job_from_reservation(moved: CTE) -> ReturningInsert[Any]:
    columns = _JOB_TABLE.c
    values = [
        bindparam("job_id", type_=columns.id.type),
        bindparam("tenant_id", type_=columns.tenant_id.type),
        *(bindparam(f"job_{name}", type_=columns[name].type) for name in SUBMITTED_COLUMNS),
    ]
    return (
        insert(_JOB_TABLE)
        .from_select(
            ["id", "tenant_id", *SUBMITTED_COLUMNS],
            select(*values).select_from(moved),
            # The other columns take their server defaults (the models' Python defaults agree).
            include_defaults=False,
        )
        # Only what the database fills in: the job already holds what was sent, so reading it
        # back (JSON columns included) was work for nothing on every submit.
        .returning(*(column for column in columns if column.name not in _SENT))
    )


def _reserving_insert() -> ReturningInsert[Any]:
    moved = RESERVE_BALANCE.returning(Tenant.credit_balance).cte("moved")
    # Postgres runs a data-modifying CTE whether or not the main statement reads it.
    return _job_from_reservation(moved).add_cte(entry_from(moved).cte("entry"))


_RESERVE_AND_INSERT_JOB = _reserving_insert()


@dataclass(frozen=True)
class _DriverStatement:
    """A Core statement compiled once for one dialect, to run on the driver's connection: its
    SQL text, and how a parameter dict becomes the driver's positional arguments (the values
    SQLAlchemy would send: its constants filled in, each type's bind processing applied)."""

    sql: str
    names: tuple[str, ...]
    constants: dict[str, Any]
    processors: Mapping[str, Callable[[Any], Any]]

    def arguments(self, parameters: dict[str, Any]) -> list[Any]:
        values = {**self.constants, **parameters}
        for name, process in self.processors.items():
            values[name] = process(values[name])
        return [values[name] for name in self.names]


@lru_cache(maxsize=8)
def _driver_statement(statement: ReturningInsert[Any], dialect: Dialect) -> _DriverStatement:
    compiled = statement.compile(dialect=dialect)
    assert compiled.positiontup is not None  # asyncpg's paramstyle is positional
    binds = compiled.binds
    processors = {
        name: process
        for name, bind in binds.items()
        if (process := bind.type.bind_processor(dialect)) is not None
    }
    return _DriverStatement(
        sql=compiled.string,
        names=tuple(compiled.positiontup),
        constants={name: bind.effective_value for name, bind in binds.items() if not bind.required},
        processors=processors,
    )


async def reserve_and_insert_job(
    session: AsyncSession, job: Job, cost: int
) -> Mapping[str, Any] | None:
    """Take `cost` and an in-flight slot from the tenant, write the `reserve` ledger entry and
    insert `job`, in one statement: the columns of the inserted job row that the database
    filled in, or None when the tenant was refused (nothing written). IntegrityError when the
    job's idempotency key is taken.

    In autocommit (the submit of a job without an inline image) the statement runs on
    asyncpg's connection itself, prepared once per connection: SQLAlchemy's execution around it
    cost a submit more CPU than the statement's own round trip. A session that has not begun
    yet does not take a connection of its own for it either: the statement borrows one straight
    from the pool (the session's connection, its isolation level set and reset, cost about a
    tenth of a millisecond per submit). If the driver raises, the statement is run once more
    through SQLAlchemy, which raises the failure as it raises any statement's (IntegrityError;
    a dead connection invalidates the pool, and the api answers 503): a failed statement wrote
    nothing in autocommit, so running it again cannot write twice. In a transaction (an inline
    image stored before the commit, a savepoint for the idempotency race, a transaction pooler)
    it runs through SQLAlchemy, which began that transaction."""
    parameters = {
        **{
            f"job_{name}": job.__dict__[name]
            if name in job.__dict__ or name not in _SUBMITTED_DEFAULTS
            else _SUBMITTED_DEFAULTS[name]
            for name in SUBMITTED_COLUMNS
        },
        "entry_id": uuid7(),
        "tenant_id": job.tenant_id,
        "job_id": job.id,
        "kind": CreditKind.RESERVE.value,
        "change": -cost,
        "reason": None,
    }
    reply_lost = False
    engine = _unbegun_autocommit_engine(session)
    if engine is not None:
        statement = _driver_statement(_RESERVE_AND_INSERT_JOB, engine.dialect)
        try:
            record = await _fetchrow_pooled(engine, statement, parameters)
        except _ConnectionLost:
            reply_lost = True
        except asyncpg.PostgresError:
            pass  # raised again below, the way SQLAlchemy raises it
        else:
            return None if record is None else dict(record.items())
    connection = await session.connection()
    adapted = (await connection.get_raw_connection()).dbapi_connection
    if not reply_lost and adapted is not None and getattr(adapted, "autocommit", False):
        statement = _driver_statement(_RESERVE_AND_INSERT_JOB, connection.dialect)
        driver: asyncpg.Connection = adapted.driver_connection
        try:
            record = await driver.fetchrow(statement.sql, *statement.arguments(parameters))
        except Exception:  # raised again below, the way SQLAlchemy raises it
            pass
        else:
            return None if record is None else dict(record.items())
    try:
        row = (await connection.execute(_RESERVE_AND_INSERT_JOB, parameters)).one_or_none()
    except IntegrityError:
        if not reply_lost:
            raise
        # The connection died after Postgres ran the statement and before its answer came:
        # the job is there (its id is what clashed), reserved once.
        inserted = await _inserted_job(session, job.id)
        if inserted is None:
            raise
        return inserted
    return None if row is None else row._mapping


class _ConnectionLost(Exception):
    """The pooled connection failed under the statement (its outcome unknown)."""


def _unbegun_autocommit_engine(session: AsyncSession) -> AsyncEngine | None:
    """The session's engine when it commits every statement and the session holds no
    connection yet; else None."""
    bind = session.bind
    if (
        isinstance(bind, AsyncEngine)
        and session.sync_session.get_transaction() is None
        and bind.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    ):
        return bind
    return None


async def _fetchrow_pooled(
    engine: AsyncEngine, statement: _DriverStatement, parameters: dict[str, Any]
) -> asyncpg.Record | None:
    """Run `statement` on the driver's connection of one borrowed from `engine`'s pool.
    asyncpg.PostgresError when the server refused the statement (the connection is fine);
    `_ConnectionLost` when the connection failed under it (it is invalidated: closed, never
    pooled again)."""
    pooled = await engine.raw_connection()
    driver: asyncpg.Connection = pooled.driver_connection
    try:
        record: asyncpg.Record | None = await driver.fetchrow(
            statement.sql, *statement.arguments(parameters)
        )
    except BaseException as exc:
        alive = isinstance(exc, asyncpg.PostgresError) and not driver.is_closed()
        if not alive:
            await greenlet_spawn(pooled.invalidate)
        await greenlet_spawn(pooled.close)
        if alive or not isinstance(exc, Exception):
            raise
        raise _ConnectionLost from exc
    await greenlet_spawn(pooled.close)
    return record


async def _inserted_job(session: AsyncSession, job_id: uuid.UUID) -> Mapping[str, Any] | None:
    """What the database filled in of job `job_id`'s row, if it exists."""
    columns = [column for column in _JOB_TABLE.c if column.name not in _SENT]
    row = (await session.execute(select(*columns).where(_JOB_TABLE.c.id == job_id))).one_or_none()
    return None if row is None else dict(row._mapping)
