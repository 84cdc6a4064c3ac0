"""Requests across every tenant, for operators: a filtered list and one request's record."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from relight.jobs import repository as jobs
from relight.models import Job, JobOutput, WebhookAttempt, WebhookDelivery
from relight.ops import repository
from relight.webhooks.service import list_deliveries

LIST_LIMIT = 100


@dataclass(frozen=True)
class RequestFilters:
    tenant: str | None = None  # a tenant's name
    status: str | None = None  # a job status (`succeeded`, …)
    backend: str | None = None  # the backend used, else the one requested


@dataclass(frozen=True)
class RequestRow:
    job: Job
    tenant_name: str


@dataclass(frozen=True)
class RequestRecord:
    job: Job
    tenant_name: str
    outputs: list[JobOutput]
    deliveries: list[tuple[WebhookDelivery, list[WebhookAttempt]]]


async def list_requests(
    session: AsyncSession, filters: RequestFilters, limit: int = LIST_LIMIT
) -> list[RequestRow]:
    """The newest requests matching `filters`, newest first."""
    rows = await repository.jobs_with_tenant_names(
        session,
        tenant=filters.tenant,
        status=filters.status,
        backend=filters.backend,
        limit=limit,
    )
    return [RequestRow(job=job, tenant_name=name) for job, name in rows]


async def request_record(session: AsyncSession, job_id: uuid.UUID) -> RequestRecord | None:
    """One request with its outputs and webhook deliveries (each with its attempts)."""
    row = await repository.job_with_tenant_name(session, job_id)
    if row is None:
        return None
    job, tenant_name = row
    return RequestRecord(
        job=job,
        tenant_name=tenant_name,
        outputs=await jobs.get_outputs(session, [job.id]),
        deliveries=await list_deliveries(session, job.tenant_id, job.id),
    )
