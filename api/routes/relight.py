"""Segmind-compatible submit endpoints: `POST /v1/ic-light` (sync) and `/v2/ic-light` (async)."""

from __future__ import annotations

import base64
import contextlib
import logging
import re
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError

from api.body import SUBMIT_OPENAPI, read_submission
from api.deps import API_KEY_SECURITY, SubmittingTenantDep, urls_for
from api.errors import AUTHENTICATED, error_responses
from api.responses import OrjsonResponse, image_content
from api.state import AppState
from api.waiting import wait_for_job, wait_unless_hung_up
from relight.core.config import Settings
from relight.core.errors import Conflict, RelightError
from relight.core.logs import current_request_id, job_context
from relight.core.models import Job, JobStatus
from relight.core.storage.urls import UrlBuilder
from relight.core.text import unstorable_character
from relight.core.unit_of_work import unit_of_work
from relight.credits.service import get_balance
from relight.jobs import queries
from relight.jobs.deadlines import (
    CANCEL_AFTER_DESCRIPTION,
    CANCEL_AFTER_HEADER,
    DEADLINE_EXCEEDED,
    parse_cancel_after,
)
from relight.jobs.schemas import RequestView, SubmitAccepted, SyncImage, SyncImages
from relight.jobs.service import cancel_request, submit_request
from relight.jobs.views import accepted_view, request_view
from relight.tenants.auth_cache import TenantSnapshot

logger = logging.getLogger(__name__)
router = APIRouter(tags=["relight"])

PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*(\d+)", re.I)
MAX_PREFER_WAIT_S = 60
# A failed job's error code decides the status of a synchronous answer.
FAILURE_STATUS = {
    "invalid_image": 400,
    "input_fetch_failed": 400,
    "image_too_large": 413,
    "internal_error": 500,
}
# What a submission can be refused with, before any job exists.
SUBMIT_ERRORS = (*AUTHENTICATED, 400, 403, 406, 409, 413, 415)

IDEMPOTENCY_KEY_MAX_LENGTH = 255


def _header(name: str, title: str, description: str | None, **string: Any) -> dict[str, Any]:
    """The OpenAPI entry FastAPI would write for an optional `Header()` parameter."""
    schema: dict[str, Any] = {"anyOf": [{"type": "string", **string}, {"type": "null"}]}
    entry: dict[str, Any] = {"name": name, "in": "header", "required": False}
    if description is not None:
        schema["description"] = entry["description"] = description
    schema["title"] = title
    return {**entry, "schema": schema}


# The submit routes read their headers themselves (FastAPI's header parameters cost about a
# tenth of a submit's CPU), so their OpenAPI entries are written here, as FastAPI would.
IDEMPOTENCY_KEY_HEADER = _header(
    "Idempotency-Key",
    "Idempotency-Key",
    "Retries with the same key and body return the same request",
    maxLength=IDEMPOTENCY_KEY_MAX_LENGTH,
)
PREFER_HEADER = _header("prefer", "Prefer", "`wait=N` (N ≤ 60): answer when done within N s")
ACCEPT_HEADER = _header("accept", "Accept", None)
CANCEL_AFTER = _header(
    CANCEL_AFTER_HEADER, CANCEL_AFTER_HEADER, CANCEL_AFTER_DESCRIPTION, maxLength=64
)


def cancel_after_of(request: Request) -> timedelta | None:
    """The `Cancel-After` header as a duration (422 `invalid_cancel_after` naming it)."""
    value = request.headers.get("cancel-after")
    if value is None:
        return None
    if len(value) > 64:
        value = value[:64] + "…"
    return parse_cancel_after(value)


def idempotency_key_of(request: Request) -> str | None:
    """The `Idempotency-Key` header, validated as a declared header parameter would be."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    # Stored with the job, so the text rule of every stored field applies.
    problem = unstorable_character(key)
    if problem is not None:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("header", "Idempotency-Key"),
                    "msg": problem,
                    "input": key,
                }
            ]
        )
    if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH:
        raise RequestValidationError(
            [
                {
                    "type": "string_too_long",
                    "loc": ("header", "Idempotency-Key"),
                    "msg": f"String should have at most {IDEMPOTENCY_KEY_MAX_LENGTH} characters",
                    "input": key,
                    "ctx": {"max_length": IDEMPOTENCY_KEY_MAX_LENGTH},
                }
            ]
        )
    return key


async def _submit(
    request: Request, state: AppState, tenant: TenantSnapshot, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Read the submission and hand it to `submit_request` (stored, paid for, committed,
    then queued)."""
    cancel_after = cancel_after_of(request)
    submitted = await read_submission(request, state.settings)
    submission = await submit_request(
        sessionmaker=state.sessionmaker,
        autocommit_sessionmaker=state.autocommit_sessionmaker,
        settings=state.settings,
        storage=state.storage,
        redis=state.redis,
        enqueue=state.enqueue,
        tenant=tenant,
        params=submitted.params,
        options=submitted.options,
        subject=submitted.subject,
        background=submitted.background,
        idempotency_key=idempotency_key,
        http_request_id=current_request_id.get(),
        cancel_after=cancel_after,
    )
    job = submission.job
    with job_context(job.id):
        logger.info(
            "request %s by tenant %s (backend %s, %d credits reserved)",
            "replayed" if submission.replayed else "accepted",
            tenant.name,
            job.backend_requested,
            job.credits_reserved,
        )
    return job, submission.replayed


@router.post(
    "/v2/ic-light",
    status_code=202,
    summary="Submit a relight request (asynchronous)",
    response_model=SubmitAccepted,
    responses={
        200: {"model": RequestView, "description": "finished within `Prefer: wait`"},
        **error_responses(*SUBMIT_ERRORS),
    },
    openapi_extra={
        **SUBMIT_OPENAPI,
        "parameters": [IDEMPOTENCY_KEY_HEADER, PREFER_HEADER, CANCEL_AFTER],
        "security": API_KEY_SECURITY,
    },
)
async def submit_relight(request: Request, tenant: SubmittingTenantDep) -> Any:
    state: AppState = request.app.state.relight
    idempotency_key = idempotency_key_of(request)
    prefer = request.headers.get("prefer")
    urls = urls_for(request, state.settings)
    job, replayed = await _submit(request, state, tenant, idempotency_key)
    headers = {"Location": urls.response_url(job.id)}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    match = PREFER_WAIT.search(prefer or "")
    if match:
        wait_s = min(int(match.group(1)), MAX_PREFER_WAIT_S)
        headers["Preference-Applied"] = f"wait={wait_s}"
        job = await wait_for_job(state, job.id, wait_s)
        if JobStatus(job.status).is_terminal:
            async with state.sessionmaker() as session:
                outputs = await queries.outputs_of(session, job.id)
            view = request_view(job, outputs, urls)
            return OrjsonResponse(view.model_dump(mode="json"), status_code=200, headers=headers)
    body = accepted_view(job, urls).model_dump(mode="json")
    return OrjsonResponse(body, status_code=202, headers=headers)


def _raise_for_unfinished(job: Job, urls: UrlBuilder, settings: Settings) -> None:
    status = JobStatus(job.status)
    request_id = str(job.id)
    # As on success, `x-request-id` is the job's id (the exchange's moves to x-correlation-id).
    about_the_job = {"request_id": request_id, "headers": {"x-request-id": request_id}}
    if status is JobStatus.FAILED:
        code = job.error_code or "backend_failed"
        raise RelightError(
            job.error_message or "the request failed",
            status_code=FAILURE_STATUS.get(code, 502),
            code=code,
            extra=about_the_job,
        )
    if status is JobStatus.CANCELED and job.error_code == DEADLINE_EXCEEDED:
        raise Conflict(
            job.error_message or "the request passed its deadline and was canceled",
            code=DEADLINE_EXCEEDED,
            extra=about_the_job,
        )
    if status is JobStatus.CANCELED:
        raise Conflict("the request was canceled", code="canceled", extra=about_the_job)
    raise RelightError(
        f"the request did not finish within {settings.sync_timeout_s:g} s; it keeps running, "
        f"poll {urls.status_url(job.id)}",
        status_code=504,
        code="timeout",
        extra={**about_the_job, "status_url": urls.status_url(job.id)},
    )


async def _cancel_hung_up(state: AppState, tenant: TenantSnapshot, job: Job) -> Job:
    """The job of a v1 caller that hung up, canceled and refunded: the caller never learnt its
    id, so nobody could fetch its result. One that finished meanwhile stays as it ended."""
    with contextlib.suppress(Conflict):
        async with unit_of_work(state.sessionmaker) as uow:
            await cancel_request(
                uow.session,
                tenant.id,
                job.id,
                UrlBuilder.background(state.settings),
                redis=state.redis,
                queue_name=state.settings.queue_name,
            )
        with job_context(job.id):
            logger.info("request canceled and refunded: its synchronous caller hung up")
    return await wait_for_job(state, job.id, 0)


@router.post(
    "/v1/ic-light",
    summary="Relight an image (synchronous, Segmind v1): answers the image bytes",
    response_class=Response,
    responses={
        200: {
            "model": SyncImages,
            "content": image_content(),
            "description": "the first image; all images as base64 JSON with Accept: "
            "application/json",
        },
        # Also the failure of the job itself: 400/413 (its input), 409 (canceled), 500/502
        # (it failed in Relight or in its backend), 504 (it did not finish in time).
        **error_responses(*SUBMIT_ERRORS, 500, 502, 504),
    },
    openapi_extra={
        **SUBMIT_OPENAPI,
        "parameters": [IDEMPOTENCY_KEY_HEADER, ACCEPT_HEADER, CANCEL_AFTER],
        "security": API_KEY_SECURITY,
    },
)
async def relight_sync(request: Request, tenant: SubmittingTenantDep) -> Response:
    state: AppState = request.app.state.relight
    idempotency_key = idempotency_key_of(request)
    accept = request.headers.get("accept")
    urls = urls_for(request, state.settings)
    job, _ = await _submit(request, state, tenant, idempotency_key)
    finished = await wait_unless_hung_up(
        state, job.id, state.settings.sync_timeout_s, request.receive
    )
    job = finished if finished is not None else await _cancel_hung_up(state, tenant, job)
    if job.status != JobStatus.SUCCEEDED.value:
        _raise_for_unfinished(job, urls, state.settings)
    async with state.sessionmaker() as session:
        outputs = await queries.outputs_of(session, job.id)
        balance = await get_balance(session, tenant.id)
    headers = {
        "x-request-id": str(job.id),
        "x-seed-value": str(job.seed),
        "x-remaining-credits": str(balance),
    }
    if accept and "application/json" in accept.lower():
        images = []
        for output in outputs:
            data = await state.storage.get(output.storage_key)
            images.append(
                SyncImage(
                    index=output.index,
                    content_type=output.content_type,
                    width=output.width,
                    height=output.height,
                    seed=output.seed,
                    data=base64.b64encode(data).decode(),
                )
            )
        body = SyncImages(request_id=job.id, seed=job.seed, images=images)
        return OrjsonResponse(body.model_dump(mode="json"), headers=headers)
    first = outputs[0]
    data = await state.storage.get(first.storage_key)
    return Response(content=data, media_type=first.content_type, headers=headers)
