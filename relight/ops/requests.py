"""Requests across every tenant, for operators: a filtered, paged list and one request's record,
worded as the API words it (statuses) and as the ledger tells it (credits)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from relight.core.errors import RelightError
from relight.core.models import (
    CreditKind,
    Job,
    JobOutput,
    JobStatus,
    WebhookAttempt,
    WebhookDelivery,
)
from relight.jobs import repository as jobs
from relight.jobs.lifecycle import WORKER_LOST
from relight.ops import repository
from relight.ops.repository import Cursor
from relight.webhooks.service import list_deliveries

PAGE_SIZE = 48
T = TypeVar("T")
BACKEND_SIDES = ("either", "used", "requested")
# A request id anywhere in what was pasted: the bare id, a status URL, a page's URL.
_ID_IN_TEXT = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", re.I)


class BadPageParameter(RelightError):
    """A filter, a cursor or a search the operators' page cannot read."""

    status_code = 400
    code = "bad_parameter"


def status_word(status: str) -> str:
    """A job status as the API words it (`succeeded` → COMPLETED); unknown ones as stored."""
    try:
        return JobStatus(status).public
    except ValueError:
        return status


STATUS_WORDS = [status.public for status in JobStatus]


def stored_status(word: str) -> str:
    """The stored status an API word (or a stored status, as old links carry) names."""
    for status in JobStatus:
        if word.strip().lower() in (status.value, status.public.lower()):
            return status.value
    raise BadPageParameter(
        f"status {word!r} is not one of {', '.join(STATUS_WORDS)}.", extra={"field": "status"}
    )


def request_id_in(text: str) -> uuid.UUID:
    """The request id in `text`: the bare id, or one inside a pasted URL."""
    found = _ID_IN_TEXT.search(text)
    if found is None:
        raise BadPageParameter(f"{text.strip()[:200]!r} holds no request id.")
    return uuid.UUID(found.group(0))


def cursor_text(created_at: datetime, row_id: uuid.UUID) -> str:
    """How a page boundary travels in a link (`after=` / `before=`)."""
    return f"{created_at.isoformat()}_{row_id}"


def parse_cursor(name: str, text: str) -> Cursor | None:
    if not text:
        return None
    moment, _, row_id = text.rpartition("_")
    try:
        created_at = datetime.fromisoformat(moment)
        if created_at.tzinfo is None:
            raise ValueError("no time zone")
        return created_at, uuid.UUID(row_id)
    except ValueError:
        raise BadPageParameter(
            f"{name} {text[:100]!r} is not a page boundary this page made; "
            "start again from the first page."
        ) from None


@dataclass(frozen=True)
class RequestFilters:
    tenant: str | None = None  # a tenant's name
    status: str | None = None  # a stored job status (`succeeded`, …)
    backend: str | None = None
    backend_side: str = "either"  # which backend `backend` matches: used, requested, either


@dataclass(frozen=True)
class RequestRow:
    job: Job
    tenant_name: str


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a newest-first list, with the boundaries for its neighbours (None: no
    such page)."""

    rows: list[T]
    older: str | None  # `after=` of the next (older) page
    newer: str | None  # `before=` of the previous (newer) page


def paged(fetched: list[T], key: list[Cursor], limit: int, *, after: bool, before: bool) -> Page[T]:
    """The page from rows fetched with one row too many (newest first once turned round)."""
    more = len(fetched) > limit
    rows, keys = fetched[:limit], key[:limit]
    if before:
        rows, keys = rows[::-1], keys[::-1]
    older_exists = (more and not before) or before
    newer_exists = (more and before) or after
    return Page(
        rows=rows,
        older=cursor_text(*keys[-1]) if rows and older_exists else None,
        newer=cursor_text(*keys[0]) if rows and newer_exists else None,
    )


async def list_requests(
    session: AsyncSession,
    filters: RequestFilters,
    *,
    after: str = "",
    before: str = "",
    limit: int = PAGE_SIZE,
) -> Page[RequestRow]:
    """A page of the requests matching `filters`, newest first: the newest, or those older
    than `after`, or those newer than `before` (cursors from a previous page)."""
    older_than, newer_than = parse_cursor("after", after), parse_cursor("before", before)
    fetched = await repository.jobs_with_tenant_names(
        session,
        tenant=filters.tenant,
        status=filters.status,
        backend=filters.backend,
        backend_side=filters.backend_side,
        older_than=older_than,
        newer_than=newer_than,
        limit=limit + 1,
    )
    rows = [RequestRow(job=job, tenant_name=name) for job, name in fetched]
    keys = [(row.job.created_at, row.job.id) for row in rows]
    return paged(rows, keys, limit, after=older_than is not None, before=newer_than is not None)


@dataclass(frozen=True)
class CreditsTold:
    """A request's credits as its ledger entries tell them."""

    reserved: int  # taken at submit
    charged: int  # what it finally cost
    refunded: int  # given back on failure or cancel
    released: int  # an over-reservation given back on success
    settled: bool  # charged or refunded: nothing more will move

    def __str__(self) -> str:
        if not self.settled:
            return f"reserved {self.reserved} · not settled yet" if self.reserved else "no entry"
        parts = [f"reserved {self.reserved}", f"charged {self.charged}"]
        if self.refunded or not self.charged:
            parts.append(f"refunded {self.refunded}")
        if self.released:
            parts.append(f"released {self.released}")
        return " · ".join(parts)


def credits_told(by_kind: dict[str, int]) -> CreditsTold:
    reserved = -by_kind.get(CreditKind.RESERVE.value, 0)
    released = by_kind.get(CreditKind.CHARGE.value, 0)
    refunded = by_kind.get(CreditKind.REFUND.value, 0)
    settled = CreditKind.CHARGE.value in by_kind or CreditKind.REFUND.value in by_kind
    return CreditsTold(
        reserved=reserved,
        charged=reserved - released - refunded if settled else 0,
        refunded=refunded,
        released=released,
        settled=settled,
    )


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def attempts_told(job: Job) -> str:
    """What really happened to a request's attempts, in one line: how many, how many reached a
    backend, and why the others did not. The attempt log (`job.backend_calls`, the table below
    it) records an attempt when it ends on a backend; one that ended before any backend (its
    input could not be fetched, no backend could serve it), whose worker died, or that is
    running now has no entry."""
    if job.attempts == 0:
        if job.status == JobStatus.QUEUED.value:
            return "no attempt yet (waiting in the queue)"
        return f"no attempt: {status_word(job.status)} before any worker took it"
    logged = len(job.backend_calls)
    unlogged = job.attempts - logged
    told = _plural(job.attempts, "attempt")
    if unlogged <= 0:
        told += ", each recorded below"
    else:
        if logged == 0:
            told += "; no backend call recorded"
        else:
            told += f"; {logged} reached a backend (below), {unlogged} did not"
        told += _why_unlogged(job)
    if job.status == JobStatus.QUEUED.value:
        told += "; waiting in the queue for the next"
    return told


def _why_unlogged(job: Job) -> str:
    if job.status == JobStatus.RUNNING.value:
        return " (the current one is running)"
    if job.status == JobStatus.CANCELED.value:
        return " (canceled while it ran)"
    if not job.error_code:
        return ""
    reason = f"{job.error_code}: {job.error_message}" if job.error_message else job.error_code
    if job.error_code == WORKER_LOST:
        return f" ({reason})"
    return f" (failed before dispatch: {reason})"


@dataclass(frozen=True)
class RequestRecord:
    job: Job
    tenant_name: str
    outputs: list[JobOutput]
    deliveries: list[tuple[WebhookDelivery, list[WebhookAttempt]]]
    credits: CreditsTold
    attempts: str


async def request_record(session: AsyncSession, job_id: uuid.UUID) -> RequestRecord | None:
    """One request with its outputs, webhook deliveries (each with its attempts), its credits
    from the ledger and its attempts told as they happened."""
    row = await repository.job_with_tenant_name(session, job_id)
    if row is None:
        return None
    job, tenant_name = row
    return RequestRecord(
        job=job,
        tenant_name=tenant_name,
        outputs=await jobs.get_outputs(session, [job.id]),
        deliveries=await list_deliveries(session, job.tenant_id, job.id),
        credits=credits_told(await repository.ledger_by_kind(session, job.id)),
        attempts=attempts_told(job),
    )


async def request_exists(session: AsyncSession, job_id: uuid.UUID) -> bool:
    """Whether any tenant has a request with this id."""
    return await repository.job_with_tenant_name(session, job_id) is not None
