"""Every movement of credits: a conditional UPDATE of the balance plus one ledger entry, in the
caller's transaction (the one that also changes the job), so they commit or vanish together.

Invariants: `tenant.credit_balance` = the sum of the tenant's `credit_entry.amount`, always;
the balance never goes below zero (CHECK); a job has at most one reserve, one charge and one
refund entry (unique index), so no retry can pay or refund twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import NoReturn

from sqlalchemy import (
    CTE,
    BigInteger,
    Insert,
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
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningInsert

from relight import metrics
from relight.errors import Forbidden, InsufficientCredits, InvalidParameter, RelightError
from relight.ids import uuid7
from relight.models import CreditEntry, CreditKind, Tenant, TenantStatus

# Bounds that keep every sum far inside Postgres' bigint.
MAX_MOVEMENT = 10**12
MAX_BALANCE = 10**15


class TooManyJobs(RelightError):
    status_code = 429
    code = "too_many_jobs"


@dataclass(frozen=True)
class LedgerDiscrepancy:
    tenant_id: uuid.UUID
    tenant_name: str
    balance: int
    ledger_sum: int


# Every movement is one statement (a data-modifying CTE: the balance UPDATE, then its ledger
# entry from the UPDATE's RETURNING), so each is a single round trip. The statements are built
# once with bound parameters; `change` is the signed amount added to the balance and recorded.
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
# (`relight.credits.reservation` runs it, with the job's insert, in one statement).
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


async def _move_with_entry(
    session: AsyncSession,
    movement: ReturningInsert[uuid.UUID, int],
    tenant_id: uuid.UUID,
    kind: CreditKind,
    change: int,
    *,
    job_id: uuid.UUID | None = None,
    reason: str | None = None,
) -> tuple[uuid.UUID, int] | None:
    """Run one of the movements above; `(entry id, new balance)`, or None when its UPDATE
    matched no tenant row."""
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


async def explain_refusal(session: AsyncSession, tenant_id: uuid.UUID, amount: int) -> NoReturn:
    tenant = (
        await session.execute(
            select(
                Tenant.status, Tenant.credit_balance, Tenant.active_jobs, Tenant.max_in_flight
            ).where(Tenant.id == tenant_id)
        )
    ).one()
    if tenant.status != TenantStatus.ACTIVE.value:
        raise Forbidden("this account is suspended", code="tenant_suspended")
    if tenant.credit_balance < amount:
        raise InsufficientCredits(
            f"insufficient credits: this request costs {amount}, "
            f"the balance is {tenant.credit_balance}",
            extra={"required": amount, "available": tenant.credit_balance},
        )
    raise TooManyJobs(
        f"too many requests in flight: {tenant.active_jobs} of {tenant.max_in_flight} "
        "are queued or running; retry when one finishes",
        extra={"limit": tenant.max_in_flight, "headers": {"Retry-After": "1"}},
    )


async def _settle(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    kind: CreditKind,
    amount: int,
    reason: str | None,
) -> int:
    moved = await _move_with_entry(
        session, SETTLE, tenant_id, kind, amount, job_id=job_id, reason=reason
    )
    if moved is None:
        raise LookupError(f"tenant {tenant_id} does not exist")
    return moved[1]


async def charge_credits(
    session: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID, *, reserved: int, cost: int
) -> int:
    """Settle a succeeded job: it costs `cost`; what was reserved beyond that goes back."""
    if not 0 <= cost <= reserved:
        raise ValueError(f"a job cannot cost {cost} when {reserved} was reserved")
    balance = await _settle(session, tenant_id, job_id, CreditKind.CHARGE, reserved - cost, None)
    metrics.count_credits(session, "charged", cost)
    return balance


async def refund_credits(
    session: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID, amount: int, reason: str
) -> int:
    """Give a job's reservation back (failed, canceled, expired): at most once per job."""
    balance = await _settle(session, tenant_id, job_id, CreditKind.REFUND, amount, reason)
    metrics.count_credits(session, "refunded", amount)
    return balance


async def grant_credits(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    amount: int,
    *,
    reason: str,
    kind: CreditKind = CreditKind.GRANT,
) -> CreditEntry:
    """Add credits (a grant, > 0) or correct the balance (an adjustment, either sign)."""
    if kind not in (CreditKind.GRANT, CreditKind.ADJUST):
        raise ValueError(f"{kind} entries belong to jobs")
    if kind is CreditKind.GRANT and amount <= 0:
        raise InvalidParameter(
            "a grant must be a positive number of credits", extra={"field": "amount"}
        )
    if amount == 0:
        raise InvalidParameter("an adjustment of 0 changes nothing", extra={"field": "amount"})
    if not reason.strip():
        raise InvalidParameter("say why: a reason is required", extra={"field": "reason"})
    if abs(amount) > MAX_MOVEMENT:
        raise InvalidParameter(
            f"one movement is at most {MAX_MOVEMENT} credits", extra={"field": "amount"}
        )
    moved = await _move_with_entry(session, ADJUST, tenant_id, kind, amount, reason=reason)
    if moved is None:
        limit = "make the balance negative" if amount < 0 else f"exceed {MAX_BALANCE} credits"
        raise InvalidParameter(f"a movement of {amount} would {limit}", extra={"field": "amount"})
    if kind is CreditKind.GRANT:
        metrics.count_credits(session, "granted", amount)
    entry = await session.get(CreditEntry, moved[0])
    assert entry is not None
    return entry


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


async def audit_ledger(session: AsyncSession) -> list[LedgerDiscrepancy]:
    """Every tenant whose balance differs from the sum of its ledger entries (should be none)."""
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
    return [
        LedgerDiscrepancy(
            # sum() of a bigint is NUMERIC in Postgres: back to int.
            tenant_id=row[0],
            tenant_name=row[1],
            balance=int(row[2]),
            ledger_sum=int(row[3]),
        )
        for row in rows
    ]
