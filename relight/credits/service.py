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

from sqlalchemy.ext.asyncio import AsyncSession

from relight.core import metrics
from relight.core.errors import Forbidden, InsufficientCredits, InvalidParameter, RelightError
from relight.core.models import CreditEntry, CreditKind, TenantStatus
from relight.credits import repository
from relight.credits.repository import MAX_BALANCE, MAX_MOVEMENT

__all__ = [
    "MAX_BALANCE",
    "MAX_MOVEMENT",
    "LedgerDiscrepancy",
    "TooManyJobs",
    "audit_ledger",
    "charge_credits",
    "explain_refusal",
    "get_balance",
    "grant_credits",
    "list_entries",
    "refund_credits",
]


class TooManyJobs(RelightError):
    status_code = 429
    code = "too_many_jobs"


@dataclass(frozen=True)
class LedgerDiscrepancy:
    tenant_id: uuid.UUID
    tenant_name: str
    balance: int
    ledger_sum: int


async def explain_refusal(session: AsyncSession, tenant_id: uuid.UUID, amount: int) -> NoReturn:
    """Raise why the tenant was refused a reservation of `amount`: suspended (403), short of
    credits (406) or at its limit of jobs in flight (429)."""
    tenant = await repository.refusal_state(session, tenant_id)
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
    moved = await repository.move_with_entry(
        session, repository.SETTLE, tenant_id, kind, amount, job_id=job_id, reason=reason
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
    moved = await repository.move_with_entry(
        session, repository.ADJUST, tenant_id, kind, amount, reason=reason
    )
    if moved is None:
        limit = "make the balance negative" if amount < 0 else f"exceed {MAX_BALANCE} credits"
        raise InvalidParameter(f"a movement of {amount} would {limit}", extra={"field": "amount"})
    if kind is CreditKind.GRANT:
        metrics.count_credits(session, "granted", amount)
    entry = await repository.get_entry(session, moved[0])
    assert entry is not None
    return entry


async def get_balance(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """The tenant's balance in credits (0 for an unknown tenant)."""
    return await repository.get_balance(session, tenant_id)


async def list_entries(
    session: AsyncSession, tenant_id: uuid.UUID, *, limit: int, before: uuid.UUID | None = None
) -> list[CreditEntry]:
    """The tenant's ledger, newest first; entry ids are time-ordered, so the id is the cursor."""
    return await repository.list_entries(session, tenant_id, limit=limit, before=before)


async def audit_ledger(session: AsyncSession) -> list[LedgerDiscrepancy]:
    """Every tenant whose balance differs from the sum of its ledger entries (should be none)."""
    return [
        LedgerDiscrepancy(tenant_id=tenant_id, tenant_name=name, balance=balance, ledger_sum=total)
        for tenant_id, name, balance, total in await repository.ledger_discrepancies(session)
    ]
