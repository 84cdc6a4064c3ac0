"""What operators do from their page: cancel a request, send its webhooks (or a batch's) again,
revoke a key, change a tenant's limits, backends or weight, grant or adjust credits, suspend or
resume.

Each action calls the same service as the admin API or the tenant API, so the same rules
hold, and answers an `Outcome`: what it would do (for the confirmation) and what it did (for
the page's flash), both in words with the ids and amounts. `rehearse` runs an action in a
savepoint and undoes it, so the confirmation says what the very same code would do, and a
change the services refuse is refused before the operator confirms it.

Every action is logged once it committed (an after-commit callback, so a rehearsal or a
rollback logs nothing), as `operator action` with structured fields: the operator's session,
the action, and what changed (`relight.core.logs` writes them into the JSON line).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from relight.batches import deliveries as batch_deliveries
from relight.core.errors import Conflict, InvalidParameter, RelightError, RequestNotFound
from relight.core.models import CreditKind, Job, JobStatus, Tenant, TenantStatus
from relight.core.storage.urls import UrlBuilder
from relight.core.unit_of_work import after_commit
from relight.credits import service as credits
from relight.credits.schemas import CreditMovement
from relight.jobs import service as jobs
from relight.ops import repository
from relight.tenants import service as tenants
from relight.tenants.schemas import LimitsUpdate
from relight.webhooks import service as webhooks

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    """An action in words: `would` asks for confirmation, `did` reports it done."""

    would: str
    did: str


async def rehearse(session: AsyncSession, action: Callable[[], Awaitable[T]]) -> T:
    """Run `action` in a savepoint, then undo it: what it would do, said by the same code. Its
    after-commit callbacks (announcements, metrics, the log line) go with the savepoint. Rows
    it changed are expired: read them again before showing them."""
    savepoint = await session.begin_nested()
    try:
        return await action()
    finally:
        await savepoint.rollback()


def _log_after_commit(
    session: AsyncSession, operator: str, action: str, what: str, **changed: Any
) -> None:
    fields = {"operator_session": operator, "action": action, **changed}
    after_commit(
        session,
        partial(logger.info, "operator action %s: %s", action, what, extra={"fields": fields}),
    )


def credits_text(amount: int) -> str:
    """`1 credit`, `1,500 credits`."""
    return f"{amount:,} credit{'' if abs(amount) == 1 else 's'}"


# --- requests ------------------------------------------------------------------------------


async def _job(session: AsyncSession, job_id: uuid.UUID) -> tuple[Job, str]:
    found = await repository.job_with_tenant_name(session, job_id)
    if found is None:
        raise RequestNotFound(f"no request {job_id}")
    return found


async def cancel_request(
    session: AsyncSession,
    job_id: uuid.UUID,
    urls: UrlBuilder,
    *,
    redis: Redis,
    queue_name: str,
    operator: str,
) -> Outcome:
    """Cancel any tenant's queued or running request, as the tenant's cancel does (refunded at
    once, announced after the commit). A request already canceled is a 409 here: the page
    must not report a refund that happened earlier."""
    job, tenant_name = await _job(session, job_id)
    was, reserved = job.job_status, job.credits_reserved
    if was is JobStatus.CANCELED:
        raise Conflict(f"request {job_id} is already CANCELED", code="not_cancelable")
    before = await credits.get_balance(session, job.tenant_id)
    await jobs.cancel_request(
        session, job.tenant_id, job_id, urls, redis=redis, queue_name=queue_name
    )
    after = await credits.get_balance(session, job.tenant_id)
    refunded = after - before
    _log_after_commit(
        session,
        operator,
        "cancel_request",
        f"canceled request {job_id} of {tenant_name}",
        job_id=str(job_id),
        tenant=tenant_name,
        status_before=was.public,
        credits_refunded=refunded,
        balance_after=after,
    )
    return Outcome(
        would=f"Cancel request {job_id} of tenant {tenant_name}? It is {was.public}; its "
        f"{credits_text(reserved)} reserved will be refunded (balance {before:,} → {after:,}).",
        did=f"Canceled request {job_id} of {tenant_name} (was {was.public}): now CANCELED, "
        f"{credits_text(refunded)} refunded; balance now {after:,}.",
    )


@dataclass(frozen=True)
class Redelivery:
    outcome: Outcome
    delivery_ids: list[uuid.UUID]  # to enqueue once the caller committed


def _redelivery(
    session: AsyncSession,
    delivery_ids: list[uuid.UUID],
    *,
    owner: str,
    owner_field: str,
    owner_id: uuid.UUID,
    tenant_name: str,
    url: str | None,
    action: str,
    operator: str,
) -> Redelivery:
    """What sending the webhooks of `owner` (`request <id>`, `batch <id>`) again says, and its
    log line once committed: one wording for a request's and a batch's."""
    count = len(delivery_ids)
    webhooks_text = f"{count} webhook{'' if count == 1 else 's'}"
    _log_after_commit(
        session,
        operator,
        action,
        f"redelivering {webhooks_text} of {owner} of {tenant_name}",
        **{owner_field: str(owner_id)},
        tenant=tenant_name,
        deliveries=[str(delivery) for delivery in delivery_ids],
        url=url,
    )
    return Redelivery(
        Outcome(
            would=f"Send the {webhooks_text} of {owner} (tenant {tenant_name}) again to {url}? "
            "The receiver gets each again with the same webhook-id.",
            did=f"Redelivering {webhooks_text} of {owner} to {url}: queued now.",
        ),
        delivery_ids,
    )


async def redeliver_webhooks(
    session: AsyncSession, job_id: uuid.UUID, urls: UrlBuilder, *, operator: str
) -> Redelivery:
    """Send a finished request's webhooks again (`relight.webhooks.service.redeliver`), the
    attempts recording `operator:<session>` as who asked. Not spent from the tenant's
    redelivery budget: that one limits the tenant's own asks."""
    job, tenant_name = await _job(session, job_id)
    delivery_ids = await webhooks.redeliver(
        session, job.tenant_id, job_id, urls, requested_by=f"operator:{operator}"
    )
    return _redelivery(
        session, delivery_ids, owner=f"request {job_id}", owner_field="job_id", owner_id=job_id,
        tenant_name=tenant_name, url=job.webhook_url, action="redeliver_webhooks",
        operator=operator,
    )  # fmt: skip


async def redeliver_batch_webhooks(
    session: AsyncSession, batch_id: uuid.UUID, *, operator: str
) -> Redelivery:
    """Send a completed batch's webhook (its `batch.completed`) again, as the tenant's
    `POST /v2/batches/{id}/webhooks/redeliver` does (`relight.batches.deliveries.redeliver`),
    the attempts recording `operator:<session>`; not spent from the tenant's redelivery
    budget. 404 for an unknown batch; 409 without a webhook URL or before the batch's end."""
    found = await repository.batch_with_tenant_name(session, batch_id)
    if found is None:
        raise RequestNotFound(f"no batch {batch_id}")
    batch, tenant_name = found
    url = batch.webhook_url
    delivery_ids = await batch_deliveries.redeliver(
        session, batch.tenant_id, batch_id, requested_by=f"operator:{operator}"
    )
    return _redelivery(
        session, delivery_ids, owner=f"batch {batch_id}", owner_field="batch_id",
        owner_id=batch_id, tenant_name=tenant_name, url=url,
        action="redeliver_batch_webhooks", operator=operator,
    )  # fmt: skip


# --- tenants ---------------------------------------------------------------------------------


async def revoke_key(
    session: AsyncSession, tenant: Tenant, prefix: str, *, operator: str
) -> Outcome:
    """Revoke one of `tenant`'s API keys by its prefix (a key of another tenant is not found
    here); every api process forgets it at once, so its next request gets 401."""
    keys = await tenants.list_api_keys(session, tenant)
    key = next((key for key in keys if key.prefix == prefix), None)
    if key is None:
        raise RelightError(
            f"tenant {tenant.name} has no API key with prefix {prefix!r}",
            status_code=404,
            code="key_not_found",
        )
    if key.revoked_at is not None:
        raise Conflict(f"API key {prefix} of {tenant.name} is revoked already", code="revoked")
    named = f" ({key.name})" if key.name else ""
    tenant_name = tenant.name
    await tenants.revoke_api_key(session, prefix)
    _log_after_commit(
        session, operator, "revoke_key", f"revoked key {prefix} of {tenant_name}",
        tenant=tenant_name, key_prefix=prefix,
    )  # fmt: skip
    return Outcome(
        would=f"Revoke API key {prefix}{named} of tenant {tenant_name}? Every request made with "
        "it gets 401 from then on; a revoked key cannot be restored.",
        did=f"Revoked API key {prefix}{named} of {tenant_name}: requests with it now get 401.",
    )


LIMIT_WORDS = {
    "requests_per_minute": "requests a minute",
    "burst": "burst",
    "max_in_flight": "at most in flight",
}


def _changes(before: dict[str, Any], after: dict[str, Any], words: dict[str, str]) -> str:
    return ", ".join(
        f"{words[name]} {before[name]} → {after[name]}"
        for name in words
        if before[name] != after[name]
    )


async def change_limits(
    session: AsyncSession, tenant: Tenant, limits: LimitsUpdate, *, operator: str
) -> Outcome:
    """Set the tenant's limits (`tenants.set_limits`, as `PATCH /admin/v1/tenants/{t}/limits`)."""
    names = list(LIMIT_WORDS)
    before = {name: getattr(tenant, name) for name in names}
    tenant_name = tenant.name
    await tenants.set_limits(session, tenant, limits)
    after = {name: getattr(tenant, name) for name in names}
    if after == before:
        raise InvalidParameter(
            f"these are {tenant_name}'s limits already: nothing to change",
            extra={"field": "limits"},
        )
    changes = _changes(before, after, LIMIT_WORDS)
    _log_after_commit(
        session, operator, "change_limits", f"limits of {tenant_name}: {changes}",
        tenant=tenant_name, before=before, after=after,
    )  # fmt: skip
    return Outcome(
        would=f"Change the limits of tenant {tenant_name}: {changes}? They apply from its next "
        "request.",
        did=f"Limits of {tenant_name} now {after['requests_per_minute']} requests a minute, "
        f"burst {after['burst']}, at most {after['max_in_flight']} in flight ({changes}).",
    )


async def change_backends(
    session: AsyncSession, tenant: Tenant, backends: list[str], *, operator: str
) -> Outcome:
    """Set the backends the tenant may use (`tenants.set_allowed_backends`, as the admin API)."""
    before = list(tenant.allowed_backends)
    tenant_name = tenant.name
    await tenants.set_allowed_backends(session, tenant, backends)
    after = list(tenant.allowed_backends)
    if after == before:
        raise InvalidParameter(
            f"{tenant_name} may use {', '.join(after)} already: nothing to change",
            extra={"field": "backends"},
        )
    was, now = ", ".join(before), ", ".join(after)
    _log_after_commit(
        session, operator, "change_backends", f"backends of {tenant_name}: {was} → {now}",
        tenant=tenant_name, before=before, after=after,
    )  # fmt: skip
    return Outcome(
        would=f"Let tenant {tenant_name}'s requests run on {now} (instead of {was})? Requests "
        "that name another backend are refused from then on; queued ones keep theirs.",
        did=f"Backends of {tenant_name} now {now} (were {was}).",
    )


async def change_weight(
    session: AsyncSession,
    tenant: Tenant,
    weight: int,
    *,
    redis: Redis,
    queue_name: str,
    operator: str,
) -> Outcome:
    """Set the tenant's dispatch weight and, once that commits, its copy in Redis that the
    workers' fair claim reads (as `PUT /admin/v1/tenants/{t}/weight` does)."""
    before, tenant_name = tenant.weight, tenant.name
    updated = await tenants.set_weight(session, tenant, weight)
    if updated.weight == before:
        raise InvalidParameter(
            f"{tenant_name}'s weight is {before} already: nothing to change",
            extra={"field": "weight"},
        )
    tenants.mirror_weight_after_commit(session, redis, queue_name, updated)
    _log_after_commit(
        session, operator, "change_weight", f"weight of {tenant_name}: {before} → {weight}",
        tenant=tenant_name, before=before, after=weight,
    )  # fmt: skip
    return Outcome(
        would=f"Set tenant {tenant_name}'s dispatch weight to {weight} (from {before})? It then "
        f"starts {weight} job{'' if weight == 1 else 's'} per turn while others wait.",
        did=f"Weight of {tenant_name} now {weight} (was {before}); the workers read it at once.",
    )


async def move_credits(
    session: AsyncSession, tenant: Tenant, movement: CreditMovement, *, operator: str
) -> Outcome:
    """Grant (or adjust) the tenant's credits with a reason (`credits.grant_credits`, as
    `POST /admin/v1/tenants/{t}/credits`)."""
    tenant_name, before = tenant.name, tenant.credit_balance
    kind = CreditKind(movement.kind)
    entry = await credits.grant_credits(
        session, tenant.id, movement.amount, reason=movement.reason, kind=kind
    )
    after, amount = entry.balance_after, movement.amount
    _log_after_commit(
        session, operator, "move_credits", f"{kind} of {amount} credits to {tenant_name}",
        tenant=tenant_name, kind=kind.value, amount=amount, reason=movement.reason,
        balance_before=before, balance_after=after,
    )  # fmt: skip
    reason = f"reason “{movement.reason}”"
    if kind is CreditKind.GRANT:
        return Outcome(
            would=f"Grant {credits_text(amount)} to tenant {tenant_name} ({reason})? Balance "
            f"{before:,} → {after:,}.",
            did=f"Granted {credits_text(amount)} to {tenant_name}; balance now {after:,}.",
        )
    return Outcome(
        would=f"Adjust tenant {tenant_name}'s balance by {amount:+,} credits ({reason})? "
        f"Balance {before:,} → {after:,}.",
        did=f"Adjusted {tenant_name}'s balance by {amount:+,} credits; balance now {after:,}.",
    )


async def set_status(
    session: AsyncSession, tenant: Tenant, status: TenantStatus, *, operator: str
) -> Outcome:
    """Suspend or resume the tenant (`tenants.set_tenant_status`, as the admin API)."""
    tenant_name, before = tenant.name, tenant.status
    if before == status.value:
        raise Conflict(f"tenant {tenant_name} is {status.value} already", code="unchanged")
    await tenants.set_tenant_status(session, tenant, status)
    _log_after_commit(
        session, operator, "set_status", f"{tenant_name}: {before} → {status.value}",
        tenant=tenant_name, before=before, after=status.value,
    )  # fmt: skip
    if status is TenantStatus.SUSPENDED:
        return Outcome(
            would=f"Suspend tenant {tenant_name}? Its new requests are refused (403) until it is "
            "resumed; requests already accepted still run.",
            did=f"Suspended {tenant_name}: its new requests now get 403.",
        )
    return Outcome(
        would=f"Resume tenant {tenant_name}? Its API keys work again at once.",
        did=f"Resumed {tenant_name}: its API keys work again.",
    )
