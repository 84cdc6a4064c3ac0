"""The v2 request API: status (polled or streamed), record, listing, cancel, output downloads."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from sse_starlette import EventSourceResponse

from api.deps import (
    KeyUnlessSignedDep,
    RequestsCancelScope,
    RequestsReadScope,
    StateDep,
    TenantDep,
    UnitOfWorkDep,
    UrlsDep,
    apply_rate_limit,
    request_key,
)
from api.errors import AUTHENTICATED, error_responses
from api.responses import image_content
from api.stream_limits import SlotEventSourceResponse
from api.streaming import DONE_EVENT, EVENT_SCHEMA, STATUS_EVENT, status_events
from relight.core.errors import RelightError, RequestNotFound, Unauthorized
from relight.core.image_structure import sniff_format
from relight.core.images import ALLOWED_FORMATS as INPUT_TYPES
from relight.core.models import JobStatus
from relight.core.storage import StoredObjectMissing
from relight.core.storage.urls import (
    INPUT_INDEX,
    SignatureCheck,
    UrlBuilder,
    check_signature,
    stream_scope,
    verify_output_signature,
)
from relight.jobs import queries
from relight.jobs import service as jobs
from relight.jobs.schemas import PublicStatus, RequestList, RequestView, StatusView
from relight.jobs.views import request_view, status_view

router = APIRouter(prefix="/v2/requests", tags=["requests"])
# A route that takes a request id also answers 404 (no such request, or another account's).
ONE_REQUEST = error_responses(*AUTHENTICATED, 404)

PUBLIC_TO_STATUS = {status.public: status for status in JobStatus}


def segmind_sdk_called(request: Request) -> bool:
    """Whether Segmind's SDK made the call: it marks its traffic `X-Initiator: SDK-PY`.

    Its `wait()` knows two terminal states, COMPLETED and FAILED, and would poll a CANCELED
    request until its 600 s timeout; so to it a canceled request reads FAILED (with `error`
    "the request was canceled" and `error_code` "canceled") and `wait()` raises at once.
    """
    return request.headers.get("x-initiator", "").upper().startswith("SDK-")


@router.get(
    "/{request_id}/status",
    response_model=StatusView,
    summary="A request's status",
    responses=ONE_REQUEST,
    dependencies=[RequestsReadScope],
)
async def get_request_status(
    request: Request, request_id: uuid.UUID, uow: UnitOfWorkDep, tenant: TenantDep, urls: UrlsDep
) -> StatusView:
    found = await queries.request_state(uow.session, tenant.id, request_id, with_outputs=False)
    view = status_view(found.job, found.queue_position, urls)
    if view.status is PublicStatus.CANCELED and segmind_sdk_called(request):
        view = view.model_copy(update={"status": PublicStatus.FAILED})
    return view


@router.get(
    "/{request_id}/status/stream",
    summary="A request's status as Server-Sent Events, until it is finished",
    description=(
        f"`{STATUS_EVENT}` events (the JSON of `GET /v2/requests/{{id}}/status`) whenever the "
        "status, queue position or progress changes, heartbeat comments while nothing does, "
        f"then `{DONE_EVENT}` (the JSON of `GET /v2/requests/{{id}}`) once the request is "
        "finished, and the stream ends. Each event's id names the state it shows: reconnect "
        "with `Last-Event-ID` to skip what you saw; a finished request always answers its "
        "final events. Opens with the API key, or without one through the signed `stream_url` "
        "of the request's record (`expires` and `signature`), which a browser's `EventSource` "
        "can open: a wrong signature is 401 `invalid_signature`, an expired one 401 "
        "`signature_expired`."
    ),
    response_class=Response,
    responses={
        200: {
            # Before OpenAPI 3.2 (`itemSchema`), an event stream's `schema` describes each
            # event: what schemathesis validates every event against (tests/api/test_schemathesis).
            "content": {"text/event-stream": {"schema": EVENT_SCHEMA}},
            "description": (
                "the event stream (Server-Sent Events): each event has an `id`, an `event` "
                f"(`{STATUS_EVENT}`, or `{DONE_EVENT}` last) and JSON `data` (a StatusView, "
                "or the RequestView once finished); the schema describes one event"
            ),
        },
        **ONE_REQUEST,
    },
    # Either the API key or the signed URL's query: no credentials is a valid alternative.
    openapi_extra={"security": [{}]},
)
async def stream_request_status(
    request: Request,
    request_id: uuid.UUID,
    state: StateDep,
    uow: UnitOfWorkDep,
    urls: UrlsDep,
    key: KeyUnlessSignedDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=200,
            description="the id of the last event received, when reconnecting",
        ),
    ] = None,
    expires: Annotated[int | None, Query(description="from the signed `stream_url`")] = None,
    signature: Annotated[
        str | None, Query(max_length=128, description="from the signed `stream_url`")
    ] = None,
) -> EventSourceResponse:
    settings = state.settings
    if key is None and expires is not None and signature is not None:
        check = check_signature(settings.secret_key, stream_scope(request_id), expires, signature)
        if check is SignatureCheck.INVALID:
            raise Unauthorized("the stream URL is invalid", code="invalid_signature")
        if check is SignatureCheck.EXPIRED:
            raise Unauthorized(
                "the stream URL has expired: read the request again for a fresh stream_url",
                code="signature_expired",
            )
        job = await queries.find_any_request(uow.session, request_id)
        if job is None:
            raise RequestNotFound(f"no request {request_id}")
        # A request's signed URLs count as one key; the tenant's bound holds for them all.
        stream_key = f"signed:{request_id}"
    else:
        if key is None:
            raise Unauthorized("the stream URL needs both `expires` and `signature`")
        tenant = key.tenant
        await apply_rate_limit(request, state, tenant, cost=0)
        # Checked here, so that an unknown or another account's request is a 404, not a stream.
        job = await queries.find_request(uow.session, tenant.id, request_id)
        stream_key = request_key(request) or ""
    give_back = state.stream_slots.take(
        stream_key,
        job.tenant_id,
        per_key=settings.max_streams_per_key,
        per_tenant=settings.max_streams_per_tenant,
    )
    return SlotEventSourceResponse(
        status_events(state, job.tenant_id, job.id, urls, last_event_id),
        ping=settings.status_stream_ping_s,
        give_back=give_back,
    )


@router.get(
    "/{request_id}",
    response_model=RequestView,
    summary="A request's full record",
    responses=ONE_REQUEST,
    dependencies=[RequestsReadScope],
)
async def get_request(
    request: Request, request_id: uuid.UUID, uow: UnitOfWorkDep, tenant: TenantDep, urls: UrlsDep
) -> RequestView:
    job, outputs = await queries.request_with_outputs(uow.session, tenant.id, request_id)
    view = request_view(job, outputs, urls)
    if view.status is PublicStatus.CANCELED and segmind_sdk_called(request):
        view = view.model_copy(update={"status": PublicStatus.FAILED})
    return view


@router.get(
    "",
    response_model=RequestList,
    summary="This account's requests, newest first",
    responses=error_responses(*AUTHENTICATED),
    dependencies=[RequestsReadScope],
)
async def list_requests(
    uow: UnitOfWorkDep,
    tenant: TenantDep,
    urls: UrlsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        uuid.UUID | None, Query(description="`next_cursor` of the previous page")
    ] = None,
    status: Annotated[
        PublicStatus | None, Query(description="only requests in this status")
    ] = None,
) -> RequestList:
    page = await queries.list_requests(
        uow.session,
        tenant.id,
        limit=limit,
        before=cursor,
        status=PUBLIC_TO_STATUS[status] if status else None,
    )
    return RequestList(
        data=[request_view(job, page.outputs.get(job.id, []), urls) for job in page.jobs],
        next_cursor=str(page.jobs[-1].id) if page.more else None,
    )


@router.post(
    "/{request_id}/cancel",
    response_model=RequestView,
    summary="Cancel a queued or running request (refunded at once)",
    description=(
        "A queued or running request ends CANCELED and refunded; a running one stops at its "
        "next safe point. One that already completed or failed stays so: 409 not_cancelable."
    ),
    responses=error_responses(*AUTHENTICATED, 404, 409),
    dependencies=[RequestsCancelScope],
)
async def cancel_request(
    request_id: uuid.UUID, state: StateDep, uow: UnitOfWorkDep, tenant: TenantDep, urls: UrlsDep
) -> RequestView:
    # Announced once the request's unit of work commits, before the answer is sent.
    canceled = await jobs.cancel_request(
        uow.session,
        tenant.id,
        request_id,
        UrlBuilder.background(state.settings),
        redis=state.redis,
        queue_name=state.settings.queue_name,
    )
    outputs = await queries.outputs_of(uow.session, canceled.job.id)
    return request_view(canceled.job, outputs, urls)


@router.get(
    "/{request_id}/input",
    summary="The stored subject image, with the signed URL handed to Segmind",
    response_class=Response,
    responses={
        200: {"content": image_content(), "description": "the subject image"},
        # Signed, not behind an API key: no rate limit.
        **error_responses(401, 404, 410, 422, 503),
    },
)
async def get_request_input(
    request_id: uuid.UUID,
    state: StateDep,
    uow: UnitOfWorkDep,
    expires: Annotated[int, Query(description="from the signed URL")],
    signature: Annotated[str, Query(max_length=128, description="from the signed URL")],
) -> Response:
    if not verify_output_signature(
        state.settings.secret_key, request_id, INPUT_INDEX, expires, signature
    ):
        raise Unauthorized("the input URL is invalid or has expired", code="invalid_signature")
    job = await queries.find_any_request(uow.session, request_id)
    if job is None or job.input_storage_key is None:
        raise RequestNotFound(f"request {request_id} has no stored input")
    try:
        data = await state.storage.get(job.input_storage_key)
    except StoredObjectMissing as exc:
        raise RelightError(
            "this input is no longer stored", status_code=410, code="input_expired"
        ) from exc
    return Response(content=data, media_type=INPUT_TYPES.get(sniff_format(data) or "", "image"))


@router.get(
    "/{request_id}/outputs/{index}",
    summary="An output image: with the API key, or with the signed URL from the record",
    response_class=Response,
    responses={
        200: {"content": image_content(), "description": "the image"},
        **error_responses(*AUTHENTICATED, 404, 410),
    },
    # Either the API key or the signed URL's query: no credentials is a valid alternative.
    openapi_extra={"security": [{}]},
)
async def get_request_output(
    request: Request,
    request_id: uuid.UUID,
    index: Annotated[int, Path(ge=0, le=11, description="output index, from 0")],
    state: StateDep,
    uow: UnitOfWorkDep,
    key: KeyUnlessSignedDep,
    expires: Annotated[int | None, Query(description="from the signed URL")] = None,
    signature: Annotated[
        str | None, Query(max_length=128, description="from the signed URL")
    ] = None,
) -> Response:
    if key is None:
        if expires is None or signature is None:  # the dependency saw both
            raise Unauthorized("the output URL is incomplete", code="invalid_signature")
        if not verify_output_signature(
            state.settings.secret_key, request_id, index, expires, signature
        ):
            raise Unauthorized("the output URL is invalid or has expired", code="invalid_signature")
        job = await queries.find_any_request(uow.session, request_id)
        if job is None:
            raise RequestNotFound(f"no request {request_id}")
    else:
        await apply_rate_limit(request, state, key.tenant, cost=0)
        job = await queries.find_request(uow.session, key.tenant.id, request_id)
    output = await queries.output_of(uow.session, job.id, index)
    if output is None:
        raise RequestNotFound(f"request {request_id} has no output {index}")
    if output.deleted_at is not None:
        raise RelightError(
            "this output was deleted when its retention period ended",
            status_code=410,
            code="output_expired",
        )
    try:
        data = await state.storage.get(output.storage_key)
    except StoredObjectMissing as exc:
        raise RelightError(
            "this output is no longer stored", status_code=410, code="output_expired"
        ) from exc
    return Response(
        content=data,
        media_type=output.content_type,
        headers={
            "Cache-Control": "private, max-age=3600",
            "ETag": f'"{output.sha256}"',
            "Content-Disposition": f'inline; filename="{request_id}-{index}.'
            f'{output.storage_key.rsplit(".", 1)[-1]}"',
        },
    )
