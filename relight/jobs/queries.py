"""Reading a tenant's requests, for the api: a status, a record, a page of the listing, an
output, the usage of an account. Every read of another account's request is as unknown as a
made-up id (`RequestNotFound`); the queries themselves are `relight.jobs.repository`'s."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from relight.core.models import Job, JobOutput, JobStatus
from relight.jobs import repository


@dataclass(frozen=True)
class RequestState:
    """A request as it stands: the job, its place in the queue while queued, and its outputs
    once it is finished (empty before, or when not asked for)."""

    job: Job
    queue_position: int | None
    outputs: list[JobOutput]


@dataclass(frozen=True)
class RequestPage:
    """One page of an account's requests, newest first, each job's outputs by job id."""

    jobs: list[Job]
    outputs: dict[uuid.UUID, list[JobOutput]]
    more: bool  # whether older requests follow the page's last one


async def find_request(session: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    """The tenant's request; `RequestNotFound` for another account's or an unknown id."""
    return await repository.get_job(session, tenant_id, job_id)


async def find_any_request(session: AsyncSession, job_id: uuid.UUID) -> Job | None:
    """Any account's request, for a caller that proved its right otherwise (a signed URL, the
    submit that just committed it); read afresh."""
    return await repository.get_job_by_id(session, job_id)


async def request_state(
    session: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID, *, with_outputs: bool
) -> RequestState:
    """The tenant's request with its queue position while queued and, with `with_outputs`,
    its outputs once it is finished."""
    job = await repository.get_job(session, tenant_id, job_id)
    position = None
    if job.job_status is JobStatus.QUEUED:
        position = await repository.queue_position(session, job)
    finished = with_outputs and job.job_status.is_terminal
    outputs = await repository.get_outputs(session, [job.id]) if finished else []
    return RequestState(job, position, outputs)


async def request_with_outputs(
    session: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID
) -> tuple[Job, list[JobOutput]]:
    """The tenant's request and its outputs (its full record)."""
    job = await repository.get_job(session, tenant_id, job_id)
    return job, await repository.get_outputs(session, [job.id])


async def outputs_of(session: AsyncSession, job_id: uuid.UUID) -> list[JobOutput]:
    """A request's outputs, by index."""
    return await repository.get_outputs(session, [job_id])


async def output_of(session: AsyncSession, job_id: uuid.UUID, index: int) -> JobOutput | None:
    """A request's output number `index`, if it has one."""
    return await repository.get_output(session, job_id, index)


async def list_requests(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    limit: int,
    before: uuid.UUID | None,
    status: JobStatus | None,
) -> RequestPage:
    """Up to `limit` of the tenant's requests older than `before` (a request id; None: the
    newest), in `status` if given, with their outputs."""
    jobs = await repository.list_jobs(
        session, tenant_id, limit=limit + 1, before=before, status=status
    )
    page = jobs[:limit]
    by_job: dict[uuid.UUID, list[JobOutput]] = {}
    for output in await repository.get_outputs(session, [job.id for job in page]):
        by_job.setdefault(output.job_id, []).append(output)
    return RequestPage(jobs=page, outputs=by_job, more=len(jobs) > limit)


async def usage_since(
    session: AsyncSession, tenant_id: uuid.UUID, since: datetime
) -> tuple[dict[str, int], int]:
    """The tenant's requests by public status created since `since`, and the credits they
    were charged."""
    return await repository.usage_since(session, tenant_id, since)
