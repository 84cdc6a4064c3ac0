"""Batches: `POST /v2/batches` (many requests in one call), the listing, the batch's record and
its cancel."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api.body import read_batch
from api.deps import (
    API_KEY_SECURITY,
    RequestsCancelScope,
    RequestsReadScope,
    StateDep,
    SubmittingTenantDep,
    TenantDep,
    UnitOfWorkDep,
    UrlsDep,
    urls_for,
)
from api.errors import AUTHENTICATED, error_responses
from api.responses import OrjsonResponse
from api.routes.relight import (
    CANCEL_AFTER,
    IDEMPOTENCY_KEY_HEADER,
    cancel_after_of,
    idempotency_key_of,
)
from api.state import AppState
from relight.batches import service as batches
from relight.batches.schemas import BatchAccepted, BatchList, BatchView
from relight.core.logs import current_request_id
from relight.core.storage.urls import UrlBuilder

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v2/batches", tags=["batches"])
ONE_BATCH = error_responses(*AUTHENTICATED, 404)

BATCH_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchBody"}}},
    }
}


@router.post(
    "",
    status_code=202,
    summary="Submit many relight requests at once (a batch)",
    description=(
        "Each item is a `POST /v2/ic-light` body, validated as one (a bad item is refused "
        "naming its index: `requests[3].cfg`), and becomes an ordinary request: billed, "
        "queued in fair turns, retried and canceled as one. Credits for every item are "
        "reserved in one transaction: if the account cannot pay for them all (406, naming the "
        "shortfall) or has not enough free in-flight places (429), nothing is reserved and no "
        "request is made. The batch spends one request of the rate limit. One "
        "`batch.completed` webhook is sent when the last item ends. Each item keeps its "
        "`priority` lane; a `Cancel-After` header gives every item that deadline (an item "
        "canceled by it counts as ended: the batch still completes, its `counts` show it)."
    ),
    response_model=BatchAccepted,
    responses=error_responses(*AUTHENTICATED, 400, 403, 406, 409, 413, 415),
    openapi_extra={
        **BATCH_OPENAPI,
        "parameters": [IDEMPOTENCY_KEY_HEADER, CANCEL_AFTER],
        "security": API_KEY_SECURITY,
    },
)
async def create_batch(request: Request, tenant: SubmittingTenantDep) -> Any:
    state: AppState = request.app.state.relight
    idempotency_key = idempotency_key_of(request)
    cancel_after = cancel_after_of(request)
    urls = urls_for(request, state.settings)
    submitted = await read_batch(request, state.settings)
    submission = await batches.submit_batch(
        sessionmaker=state.sessionmaker,
        settings=state.settings,
        storage=state.storage,
        redis=state.redis,
        enqueue=state.enqueue,
        tenant=tenant,
        items=submitted.items,
        webhook_url=submitted.webhook_url,
        webhook_events=submitted.webhook_events,
        idempotency_key=idempotency_key,
        http_request_id=current_request_id.get(),
        cancel_after=cancel_after,
    )
    logger.info(
        "batch %s of %d requests %s by tenant %s",
        submission.batch.id,
        len(submission.items),
        "replayed" if submission.replayed else "accepted",
        tenant.name,
    )
    headers = {"Location": urls.batch_url(submission.batch.id)}
    if submission.replayed:
        headers["Idempotent-Replayed"] = "true"
    body = batches.accepted_view(submission, urls).model_dump(mode="json")
    return OrjsonResponse(body, status_code=202, headers=headers)


@router.get(
    "",
    response_model=BatchList,
    summary="This account's batches, newest first",
    description=(
        "Each batch's status, counts and credits, without its items (its `status_url` lists "
        "them). Pages of `limit`; pass `next_cursor` as `cursor` for the next, older page."
    ),
    responses=error_responses(*AUTHENTICATED),
    dependencies=[RequestsReadScope],
)
async def list_batches(
    uow: UnitOfWorkDep,
    tenant: TenantDep,
    urls: UrlsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        uuid.UUID | None, Query(description="`next_cursor` of the previous page")
    ] = None,
) -> BatchList:
    return await batches.list_batches(uow.session, tenant.id, urls, limit=limit, before=cursor)


@router.get(
    "/{batch_id}",
    response_model=BatchView,
    summary="A batch's status, counts and items",
    responses=ONE_BATCH,
    dependencies=[RequestsReadScope],
)
async def get_batch(
    batch_id: uuid.UUID, uow: UnitOfWorkDep, tenant: TenantDep, urls: UrlsDep
) -> BatchView:
    return await batches.get_batch(uow.session, tenant.id, batch_id, urls)


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchView,
    summary="Cancel every item of a batch that has not ended (each refunded)",
    description=(
        "Each queued or running item ends CANCELED and refunded, as a single cancel does; "
        "items that already ended stay as they are. Answers the batch."
    ),
    responses=ONE_BATCH,
    dependencies=[RequestsCancelScope],
)
async def cancel_batch(
    batch_id: uuid.UUID, state: StateDep, uow: UnitOfWorkDep, tenant: TenantDep, urls: UrlsDep
) -> BatchView:
    # Each item is canceled (and announced) in a transaction of its own, committed here.
    await batches.cancel_batch(
        state.sessionmaker,
        tenant.id,
        batch_id,
        UrlBuilder.background(state.settings),
        redis=state.redis,
        queue_name=state.settings.queue_name,
    )
    return await batches.get_batch(uow.session, tenant.id, batch_id, urls)
