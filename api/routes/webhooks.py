"""Webhooks, tenant side: the signing secret and its rotation, the deliveries of a request or
of a batch, and their redelivery."""

from __future__ import annotations

import uuid
from functools import partial

from fastapi import APIRouter, Request

from api.deps import (
    RequestsReadScope,
    SettingsDep,
    StateDep,
    TenantDep,
    UnitOfWorkDep,
    WebhooksManageScope,
    presented_key,
    spend_redelivery,
)
from api.errors import AUTHENTICATED, error_responses
from api.state import AppState
from relight.batches import deliveries as batch_deliveries
from relight.core.models import Tenant
from relight.core.storage.urls import UrlBuilder
from relight.core.unit_of_work import UnitOfWork
from relight.tenants.keys import parse_key
from relight.webhooks import service
from relight.webhooks.schemas import DeliveryList, DeliveryView, WebhookSecretView

router = APIRouter(tags=["webhooks"], responses=error_responses(*AUTHENTICATED))


def asker(request: Request) -> str:
    """Who asked, for the attempt log: the public prefix of the API key presented."""
    headers = request.headers
    parsed = parse_key(presented_key(headers.get("x-api-key"), headers.get("authorization")) or "")
    return f"api_key:{parsed[0]}" if parsed else "api_key:unknown"


def _delivery_list(found: service.DeliveriesWithAttempts) -> DeliveryList:
    return DeliveryList(data=[DeliveryView.of(delivery, attempts) for delivery, attempts in found])


async def _spend_and_enqueue(
    request: Request,
    state: AppState,
    uow: UnitOfWork,
    tenant: Tenant,
    delivery_ids: list[uuid.UUID],
) -> None:
    """An accepted redelivery: one of the tenant's redelivery budget, then (after the commit)
    its deliveries queued. Called after the checks, inside the transaction: a 429 rolls the
    new round back, and a refused redelivery (404, 409) spends nothing."""
    await spend_redelivery(request, state, tenant)
    uow.after_commit(partial(state.enqueue_deliveries, delivery_ids))


def _secret_view(tenant: Tenant) -> WebhookSecretView:
    assert tenant.webhook_secret is not None
    expiries = [retired.expires_at for retired in service.retired_secrets(tenant)]
    return WebhookSecretView(
        secret=tenant.webhook_secret,
        previous_secret_expires_at=expiries[0] if expiries else None,
        retired_secrets_expire_at=expiries,
    )


@router.get(
    "/v2/webhooks/secret",
    response_model=WebhookSecretView,
    summary="The signing secret to verify webhooks with",
    dependencies=[WebhooksManageScope],
)
async def get_webhook_secret(uow: UnitOfWorkDep, tenant: TenantDep) -> WebhookSecretView:
    return _secret_view(await service.ensure_secret(uow.session, tenant.id))


@router.post(
    "/v2/webhooks/secret/rotate",
    response_model=WebhookSecretView,
    summary="A new signing secret; the old ones also sign until each one's overlap ends",
    dependencies=[WebhooksManageScope],
)
async def rotate_webhook_secret(
    uow: UnitOfWorkDep, tenant: TenantDep, settings: SettingsDep
) -> WebhookSecretView:
    owner = await service.rotate_secret(uow.session, tenant.id, settings.webhook_secret_overlap_s)
    return _secret_view(owner)


@router.get(
    "/v2/requests/{request_id}/webhooks",
    response_model=DeliveryList,
    tags=["requests"],
    summary="A request's webhook deliveries and every attempt",
    responses=error_responses(404),
    dependencies=[RequestsReadScope],
)
async def list_webhook_deliveries(
    request_id: uuid.UUID, uow: UnitOfWorkDep, tenant: TenantDep
) -> DeliveryList:
    return _delivery_list(await service.list_deliveries(uow.session, tenant.id, request_id))


@router.post(
    "/v2/requests/{request_id}/webhooks/redeliver",
    status_code=202,
    response_model=DeliveryList,
    tags=["requests"],
    summary="Send a finished request's webhooks again",
    responses=error_responses(404, 409),
    dependencies=[WebhooksManageScope],
)
async def redeliver_webhooks(
    request: Request, request_id: uuid.UUID, state: StateDep, uow: UnitOfWorkDep, tenant: TenantDep
) -> DeliveryList:
    """Each accepted redelivery spends one of the tenant's redelivery budget (a refused one,
    404 or 409, does not); beyond it, 429 with `Retry-After`, and nothing is sent."""
    delivery_ids = await service.redeliver(
        uow.session,
        tenant.id,
        request_id,
        UrlBuilder.background(state.settings),
        requested_by=asker(request),
    )
    await _spend_and_enqueue(request, state, uow, tenant, delivery_ids)
    return _delivery_list(await service.list_deliveries(uow.session, tenant.id, request_id))


@router.get(
    "/v2/batches/{batch_id}/webhooks",
    response_model=DeliveryList,
    tags=["batches"],
    summary="A batch's webhook deliveries (its `batch.completed`) and every attempt",
    responses=error_responses(404),
    dependencies=[RequestsReadScope],
)
async def list_batch_webhook_deliveries(
    batch_id: uuid.UUID, uow: UnitOfWorkDep, tenant: TenantDep
) -> DeliveryList:
    return _delivery_list(await batch_deliveries.list_deliveries(uow.session, tenant.id, batch_id))


@router.post(
    "/v2/batches/{batch_id}/webhooks/redeliver",
    status_code=202,
    response_model=DeliveryList,
    tags=["batches"],
    summary="Send a completed batch's webhooks again",
    responses=error_responses(404, 409),
    dependencies=[WebhooksManageScope],
)
async def redeliver_batch_webhooks(
    request: Request, batch_id: uuid.UUID, state: StateDep, uow: UnitOfWorkDep, tenant: TenantDep
) -> DeliveryList:
    """As a request's redelivery: the same webhook-id and body, from the same redelivery
    budget (a refused one, 404 or 409, spends nothing; beyond it, 429 with `Retry-After`)."""
    delivery_ids = await batch_deliveries.redeliver(
        uow.session, tenant.id, batch_id, requested_by=asker(request)
    )
    await _spend_and_enqueue(request, state, uow, tenant, delivery_ids)
    return _delivery_list(await batch_deliveries.list_deliveries(uow.session, tenant.id, batch_id))
