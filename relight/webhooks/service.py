"""Webhook rules: which deliveries a job's state change creates, claiming an attempt, recording
its outcome and the next retry, redelivery, and the tenant's signing secrets.

Delivery rows are written in the same transaction as the state change that causes them, so a
crash after the commit loses nothing: the sweeper finds due rows and sends them. The row
carries its body, rendered then: every attempt and every redelivery sends the same bytes under
the same `webhook-id`, describing the request as it was when the event happened.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from relight.core.backoff import retry_delay_s
from relight.core.errors import Conflict
from relight.core.models import (
    Job,
    JobOutput,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    WebhookStatus,
)
from relight.core.storage.urls import UrlBuilder
from relight.jobs import repository as jobs
from relight.jobs.subscribers import COMPLETED
from relight.jobs.views import request_view
from relight.webhooks import repository
from relight.webhooks.repository import OwnerKind
from relight.webhooks.signatures import generate_secret

# A receiver's Retry-After is honoured up to a day.
MAX_RETRY_AFTER_S = 24 * 3600.0


@dataclass(frozen=True)
class AttemptOutcome:
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    retry_after_s: float | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


def render_body(event: str, job: Job, outputs: list[JobOutput], urls: UrlBuilder) -> bytes:
    """A webhook's body: the request's public record, as `GET /v2/requests/{id}`, plus `event`."""
    return orjson.dumps(
        {"event": event, **request_view(job, outputs, urls).model_dump(mode="json")}
    )


async def schedule_delivery(
    session: AsyncSession, job: Job, event: str, urls: UrlBuilder
) -> uuid.UUID | None:
    """Create the delivery of `event` for `job` if it asked for it; its id (None if not).

    `job` is the row as the event left it (in the caller's transaction); the body is rendered
    from it now, so later attempts cannot describe a later state. Idempotent: a job has one
    delivery per event, whatever retries happen; the first body stays.
    """
    if not job.webhook_url or event not in job.webhook_events:
        return None
    # Outputs added in this transaction belong to the body.
    outputs = await jobs.get_outputs(session, [job.id], flush=True)
    return await repository.insert_delivery(
        session,
        tenant_id=job.tenant_id,
        job_id=job.id,
        event=event,
        url=job.webhook_url,
        payload=render_body(event, job, outputs, urls).decode(),
    )


async def schedule_batch_delivery(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    batch_id: uuid.UUID,
    event: str,
    url: str,
    body: bytes,
) -> uuid.UUID | None:
    """Create the delivery of a batch's `event` (`batch.completed`) with its body, rendered by
    the caller as the event left the batch; its id, or None when the batch has it already.
    Sent, signed and retried as every delivery is (`relight.webhooks.delivery`)."""
    return await repository.insert_batch_delivery(
        session,
        tenant_id=tenant_id,
        batch_id=batch_id,
        event=event,
        url=url,
        payload=body.decode(),
    )


async def claim_attempt(
    session: AsyncSession, delivery_id: uuid.UUID, lease_s: float
) -> WebhookDelivery | None:
    """Take the next attempt of a due delivery; None if it is not due or someone else has it.

    Moving `next_attempt_at` past the attempt's timeout is the lease: a second worker, or
    the sweeper, will not send the same attempt while this one is in flight.
    """
    return await repository.claim_attempt(session, delivery_id, lease_s)


def next_delay(
    attempts_made: int, schedule: list[float], retry_after_s: float | None
) -> float | None:
    """Seconds until the next attempt, or None when the schedule is spent.

    The receiver's Retry-After wins over the schedule when it asks for longer.
    """
    if attempts_made > len(schedule):
        return None
    return retry_delay_s(
        schedule[attempts_made - 1],
        retry_after_s=retry_after_s,
        max_retry_after_s=MAX_RETRY_AFTER_S,
    )


async def record_attempt(
    session: AsyncSession,
    delivery: WebhookDelivery,
    outcome: AttemptOutcome,
    schedule: list[float],
) -> float | None:
    """Store the attempt and move the delivery on; the delay before the next attempt, if any."""
    attempt = WebhookAttempt(
        delivery_id=delivery.id,
        number=delivery.attempts,
        started_at=outcome.started_at,
        duration_ms=outcome.duration_ms,
        status_code=outcome.status_code,
        error=outcome.error,
        response_excerpt=outcome.response_excerpt,
        requested_by=delivery.round_requested_by,
    )
    values: dict[str, object] = {
        "last_status_code": outcome.status_code,
        "last_error": outcome.error,
    }
    delay = None
    if outcome.delivered:
        values |= {"status": WebhookStatus.DELIVERED.value, "delivered_at": datetime.now(UTC)}
    elif outcome.gone:
        values["status"] = WebhookStatus.STOPPED.value
    else:
        delay = next_delay(
            delivery.attempts - delivery.round_start, schedule, outcome.retry_after_s
        )
        if delay is None:
            values["status"] = WebhookStatus.FAILED.value
        else:
            values["next_attempt_at"] = datetime.now(UTC) + timedelta(seconds=delay)
    await repository.record_attempt(session, attempt, values)
    return delay


async def due_deliveries(session: AsyncSession, limit: int = 500) -> list[tuple[uuid.UUID, int]]:
    """Pending deliveries whose next attempt is due: `(id, attempts so far)`."""
    return await repository.due_deliveries(session, limit)


DeliveriesWithAttempts = list[tuple[WebhookDelivery, list[WebhookAttempt]]]


async def deliveries_with_attempts(
    session: AsyncSession, kind: OwnerKind, owner_id: uuid.UUID
) -> DeliveriesWithAttempts:
    """The deliveries of a request (`job`) or a batch, oldest first, each with its attempts.
    The caller has checked that the tenant asking owns it."""
    deliveries = await repository.deliveries_of(session, kind, owner_id)
    attempts = await repository.attempts_of(session, [d.id for d in deliveries])
    by_delivery: dict[uuid.UUID, list[WebhookAttempt]] = {}
    for attempt in attempts:
        by_delivery.setdefault(attempt.delivery_id, []).append(attempt)
    return [(delivery, by_delivery.get(delivery.id, [])) for delivery in deliveries]


async def list_deliveries(
    session: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID
) -> DeliveriesWithAttempts:
    """A request's deliveries with their attempts (404 for unknown or foreign ids)."""
    await jobs.get_job(session, tenant_id, job_id)
    return await deliveries_with_attempts(session, "job", job_id)


def check_redeliverable(kind: OwnerKind, *, webhook_url: str | None, finished: bool) -> None:
    """Whether a request (`job`) or a batch may have its webhooks sent again: 409
    `no_webhook` without a webhook URL, 409 `not_finished` before its end."""
    noun = "request" if kind == "job" else "batch"
    if not webhook_url:
        raise Conflict(f"this {noun} has no webhook_url", code="no_webhook")
    if not finished:
        raise Conflict(f"the {noun} has not finished yet", code="not_finished")


async def start_redelivery(
    session: AsyncSession,
    kind: OwnerKind,
    owner_id: uuid.UUID,
    *,
    webhook_url: str | None,
    finished: bool,
    requested_by: str,
) -> list[uuid.UUID]:
    """Send the webhooks of a finished request (`job`) or batch again now, once
    `check_redeliverable` allows it: a new round of attempts of each of its deliveries (same
    webhook-id and body) whose attempts record `requested_by`; their ids."""
    check_redeliverable(kind, webhook_url=webhook_url, finished=finished)
    return await repository.start_round(session, kind, owner_id, requested_by)


async def redeliver(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    urls: UrlBuilder,
    *,
    requested_by: str,
) -> list[uuid.UUID]:
    """Send a request's webhooks again now, as `start_redelivery` does, its `completed`
    delivery made first if the request asked for one and has none yet."""
    job = await jobs.get_job(session, tenant_id, job_id)
    check_redeliverable("job", webhook_url=job.webhook_url, finished=job.job_status.is_terminal)
    await schedule_delivery(session, job, COMPLETED, urls)
    return await repository.start_round(session, "job", job.id, requested_by)


# At most this many rotated-out secrets keep signing (the newest ones): each adds a signature
# to every delivery, and no receiver switches through more at once. Rotating more often than
# that within the overlap retires the oldest early.
MAX_RETIRED_SECRETS = 5


@dataclass(frozen=True)
class RetiredSecret:
    secret: str
    expires_at: datetime


def retired_secrets(tenant: Tenant, now: datetime | None = None) -> list[RetiredSecret]:
    """The tenant's rotated-out secrets that still sign, newest first."""
    now = now or datetime.now(UTC)
    signing = []
    for entry in tenant.webhook_retired_secrets:
        retired = RetiredSecret(entry["secret"], datetime.fromisoformat(entry["expires_at"]))
        if retired.expires_at > now:
            signing.append(retired)
    return signing[:MAX_RETIRED_SECRETS]


async def secrets_in_use(session: AsyncSession, tenant_id: uuid.UUID) -> list[str]:
    """The secrets to sign with now: the current one, and each rotated-out one until it expires."""
    tenant = await ensure_secret(session, tenant_id)
    assert tenant.webhook_secret is not None
    return [tenant.webhook_secret, *(retired.secret for retired in retired_secrets(tenant))]


async def ensure_secret(
    session: AsyncSession, tenant_id: uuid.UUID, *, for_update: bool = False
) -> Tenant:
    """The tenant, with a signing secret (made on first use)."""
    # The new secret is only written when the tenant has none yet.
    return await repository.tenant_with_secret(
        session, tenant_id, generate_secret(), for_update=for_update
    )


async def rotate_secret(session: AsyncSession, tenant_id: uuid.UUID, overlap_s: int) -> Tenant:
    """A new secret; the one it replaces keeps signing (alongside) for `overlap_s` seconds, and
    those rotated out before keep signing until their own expiry (up to MAX_RETIRED_SECRETS)."""
    # Locked: two rotations at once must not both retire the same secret and lose one.
    tenant = await ensure_secret(session, tenant_id, for_update=True)
    assert tenant.webhook_secret is not None
    now = datetime.now(UTC)
    retiring = RetiredSecret(tenant.webhook_secret, now + timedelta(seconds=overlap_s))
    kept = [retiring, *retired_secrets(tenant, now)][:MAX_RETIRED_SECRETS]
    tenant.webhook_retired_secrets = [
        {"secret": retired.secret, "expires_at": retired.expires_at.isoformat()} for retired in kept
    ]
    tenant.webhook_secret = generate_secret()
    await repository.flush(session)
    return tenant
