"""The admin API (`/admin/v1`): the platform provisions tenants, keys, credits and limits.

Behind `Authorization: Bearer $RELIGHT_ADMIN_TOKEN` only: a tenant's API key is refused here,
and the admin token is not an API key, so it opens no tenant route. Off while the token is
unset. Every route calls the same service functions as `relight-admin`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import SettingsDep, StateDep, UnitOfWorkDep
from api.errors import ADMIN, error_responses
from api.limits import check_admin_token_throttled
from api.signin_throttle import client_address
from api.usage import (
    USAGE_CSV_DESCRIPTION,
    USAGE_CSV_RESPONSES,
    USAGE_DESCRIPTION,
    USAGE_RESPONSES,
    UsageCsvQueryDep,
    UsageQueryDep,
    usage_answer,
    usage_csv_answer,
)
from relight.core.errors import InvalidParameter
from relight.core.models import CreditKind, Tenant, TenantStatus
from relight.core.text import StorableStr
from relight.credits import service as credits
from relight.credits.schemas import CreditEntryView, CreditMovement, LedgerPage
from relight.tenants import service as tenants
from relight.tenants.schemas import (
    ApiKeyView,
    BackendsUpdate,
    CreatedKeyView,
    KeyCreate,
    KeyUpdate,
    LanesUpdate,
    LimitsUpdate,
    TenantCreate,
    TenantView,
    WebhookUrlUpdate,
    WeightUpdate,
)
from relight.usage.schemas import UsageReport

ADMIN_SCHEME = HTTPBearer(
    scheme_name="AdminToken",
    description="`Authorization: Bearer <RELIGHT_ADMIN_TOKEN>`",
    auto_error=False,
)


async def require_admin(
    request: Request,
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(ADMIN_SCHEME)],
) -> None:
    # The same check as `RequestLimits` makes before reading a body, throttled per address.
    await check_admin_token_throttled(
        state.settings,
        state.signin_throttle,
        client_address(request.scope.get("client")),
        credentials.credentials.strip() if credentials else "",
    )


router = APIRouter(
    prefix="/admin/v1",
    tags=["admin"],
    generate_unique_id_function=lambda route: f"admin_{route.name}",
    dependencies=[Depends(require_admin)],
    responses=error_responses(*ADMIN),
)
# A route that names a tenant (or a key) also answers 404; one with a body, 400 (not JSON).
NOT_FOUND = error_responses(404)
WITH_BODY = error_responses(400, 404)

TenantRef = Annotated[StorableStr, Path(description="tenant name or id")]


async def _tenant(uow: UnitOfWorkDep, tenant: TenantRef) -> Tenant:
    return await tenants.find_tenant(uow.session, tenant)


AdminTenantDep = Annotated[Tenant, Depends(_tenant)]


@router.post(
    "/tenants",
    status_code=201,
    response_model=TenantView,
    summary="Create a tenant",
    responses=error_responses(400, 409),
)
async def create_tenant(body: TenantCreate, uow: UnitOfWorkDep, state: StateDep) -> TenantView:
    tenant = await tenants.create_tenant(
        uow.session, body.name, body.credits, body.limits, body.weight
    )
    tenants.mirror_weight_after_commit(uow.session, state.redis, state.settings.queue_name, tenant)
    return TenantView.of(tenant)


@router.get("/tenants", response_model=list[TenantView], summary="List tenants")
async def list_tenants(uow: UnitOfWorkDep) -> list[TenantView]:
    return [TenantView.of(tenant) for tenant in await tenants.list_tenants(uow.session)]


@router.get(
    "/tenants/{tenant}",
    response_model=TenantView,
    summary="A tenant",
    responses=NOT_FOUND,
)
async def get_tenant(tenant: AdminTenantDep) -> TenantView:
    return TenantView.of(tenant)


@router.post(
    "/tenants/{tenant}/suspend",
    response_model=TenantView,
    summary="Suspend",
    responses=NOT_FOUND,
)
async def suspend_tenant(tenant: AdminTenantDep, uow: UnitOfWorkDep) -> TenantView:
    return TenantView.of(
        await tenants.set_tenant_status(uow.session, tenant, TenantStatus.SUSPENDED)
    )


@router.post(
    "/tenants/{tenant}/resume",
    response_model=TenantView,
    summary="Resume",
    responses=NOT_FOUND,
)
async def resume_tenant(tenant: AdminTenantDep, uow: UnitOfWorkDep) -> TenantView:
    return TenantView.of(await tenants.set_tenant_status(uow.session, tenant, TenantStatus.ACTIVE))


@router.patch(
    "/tenants/{tenant}/limits",
    response_model=TenantView,
    summary="Set limits",
    responses=WITH_BODY,
)
async def set_limits(tenant: AdminTenantDep, body: LimitsUpdate, uow: UnitOfWorkDep) -> TenantView:
    return TenantView.of(await tenants.set_limits(uow.session, tenant, body))


@router.put(
    "/tenants/{tenant}/backends",
    response_model=TenantView,
    summary="Set the allowed backends",
    responses=WITH_BODY,
)
async def set_backends(
    tenant: AdminTenantDep, body: BackendsUpdate, uow: UnitOfWorkDep
) -> TenantView:
    return TenantView.of(await tenants.set_allowed_backends(uow.session, tenant, body.backends))


@router.put(
    "/tenants/{tenant}/lanes",
    response_model=TenantView,
    summary="Set the allowed priority lanes",
    responses=WITH_BODY,
)
async def set_lanes(tenant: AdminTenantDep, body: LanesUpdate, uow: UnitOfWorkDep) -> TenantView:
    return TenantView.of(await tenants.set_allowed_lanes(uow.session, tenant, body.lanes))


@router.put(
    "/tenants/{tenant}/weight",
    response_model=TenantView,
    summary="Set the dispatch weight",
    responses=WITH_BODY,
)
async def set_weight(
    tenant: AdminTenantDep, body: WeightUpdate, uow: UnitOfWorkDep, state: StateDep
) -> TenantView:
    updated = await tenants.set_weight(uow.session, tenant, body.weight)
    tenants.mirror_weight_after_commit(uow.session, state.redis, state.settings.queue_name, updated)
    return TenantView.of(updated)


@router.put(
    "/tenants/{tenant}/webhook",
    response_model=TenantView,
    summary="Set the default webhook URL",
    responses=WITH_BODY,
)
async def set_webhook(
    tenant: AdminTenantDep, body: WebhookUrlUpdate, uow: UnitOfWorkDep, settings: SettingsDep
) -> TenantView:
    return TenantView.of(
        await tenants.set_default_webhook(uow.session, tenant, body.url, settings.egress_policy)
    )


@router.post(
    "/tenants/{tenant}/keys",
    status_code=201,
    response_model=CreatedKeyView,
    summary="Create an API key (shown once)",
    description=(
        "`scopes` default to all but `keys:manage`; `expires_at` or `expires_in` (seconds) "
        "makes the key stop working then."
    ),
    responses=WITH_BODY,
)
async def create_key(tenant: AdminTenantDep, body: KeyCreate, uow: UnitOfWorkDep) -> CreatedKeyView:
    if body.label is not None and body.name is not None and body.label != body.name:
        raise InvalidParameter(
            "give label or name (the same thing), not both", extra={"field": "label"}
        )
    expires_at = tenants.key_expiry(body.expires_at, body.expires_in, datetime.now(UTC))
    created = await tenants.create_api_key(
        uow.session, tenant, body.label or body.name, scopes=body.scopes, expires_at=expires_at
    )
    return CreatedKeyView(**ApiKeyView.of(created.api_key).model_dump(), key=created.key)


@router.get(
    "/tenants/{tenant}/keys",
    response_model=list[ApiKeyView],
    summary="List API keys",
    responses=NOT_FOUND,
)
async def list_keys(tenant: AdminTenantDep, uow: UnitOfWorkDep) -> list[ApiKeyView]:
    return [ApiKeyView.of(key) for key in await tenants.list_api_keys(uow.session, tenant)]


@router.post(
    "/keys/{prefix}/revoke",
    response_model=ApiKeyView,
    summary="Revoke an API key",
    responses=NOT_FOUND,
)
async def revoke_key(
    prefix: Annotated[StorableStr, Path(description="the key's public prefix")],
    uow: UnitOfWorkDep,
) -> ApiKeyView:
    return ApiKeyView.of(await tenants.revoke_api_key(uow.session, prefix))


@router.patch(
    "/keys/{key}",
    response_model=ApiKeyView,
    summary="Change an API key's label, scopes or expiry",
    description=(
        "The key by id or public prefix. Only the fields given change, at least one; any scope "
        "may be granted; `expires_at: null` removes the expiry. 409 `key_revoked` for a "
        "revoked key."
    ),
    responses=error_responses(400, 404, 409),
)
async def update_key(
    key: Annotated[StorableStr, Path(description="the key's id or public prefix")],
    body: KeyUpdate,
    uow: UnitOfWorkDep,
) -> ApiKeyView:
    return ApiKeyView.of(await tenants.update_api_key(uow.session, key, body))


@router.post(
    "/tenants/{tenant}/credits",
    status_code=201,
    response_model=CreditEntryView,
    summary="Grant or adjust credits",
    responses=WITH_BODY,
)
async def move_credits(
    tenant: AdminTenantDep, body: CreditMovement, uow: UnitOfWorkDep
) -> CreditEntryView:
    entry = await credits.grant_credits(
        uow.session, tenant.id, body.amount, reason=body.reason, kind=CreditKind(body.kind)
    )
    return CreditEntryView.of(entry)


@router.get(
    "/tenants/{tenant}/ledger",
    response_model=LedgerPage,
    summary="The credit ledger",
    responses=NOT_FOUND,
)
async def read_ledger(
    tenant: AdminTenantDep,
    uow: UnitOfWorkDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[uuid.UUID | None, Query(description="`next_cursor` of the last page")] = None,
) -> LedgerPage:
    entries = await credits.list_entries(uow.session, tenant.id, limit=limit + 1, before=cursor)
    page = entries[:limit]
    return LedgerPage(
        balance=tenant.credit_balance,
        data=[CreditEntryView.of(entry) for entry in page],
        next_cursor=str(page[-1].id) if len(entries) > limit else None,
    )


@router.get(
    "/tenants/{tenant}/usage",
    response_model=UsageReport,
    summary="A tenant's usage by day, backend or key (JSON or CSV)",
    description=USAGE_DESCRIPTION,
    responses={**USAGE_RESPONSES, **NOT_FOUND},
)
async def read_usage(
    tenant: AdminTenantDep, uow: UnitOfWorkDep, query: UsageQueryDep
) -> UsageReport | Response:
    return await usage_answer(uow.session, tenant.id, query, filename=f"usage-{tenant.id}")


@router.get(
    "/tenants/{tenant}/usage.csv",
    response_class=Response,
    summary="A tenant's usage by day, backend or key as CSV",
    description=USAGE_CSV_DESCRIPTION,
    responses={**USAGE_CSV_RESPONSES, **NOT_FOUND},
)
async def read_usage_csv(
    tenant: AdminTenantDep, uow: UnitOfWorkDep, query: UsageCsvQueryDep
) -> Response:
    return await usage_csv_answer(uow.session, tenant.id, query, filename=f"usage-{tenant.id}")
