"""The tenant's own API keys (`/v2/keys`): list, create (the secret shown once), edit, revoke.

Every route needs a key holding `keys:manage`, and a key cannot grant a scope it does not hold
itself; so a tenant's first managing key comes from the admin API or `relight-admin`. Like
every authenticated answer, these carry the tenant's rate-limit headers (`TenantDep`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi import APIRouter

from api.deps import KeysManagerDep, KeysManageScope, TenantDep, UnitOfWorkDep
from api.errors import AUTHENTICATED, error_responses
from relight.tenants import service as tenants
from relight.tenants.schemas import KeyList, KeyUpdate, KeyView, NewKeyRequest, NewKeyView

router = APIRouter(prefix="/v2/keys", tags=["keys"], responses=error_responses(*AUTHENTICATED))


@router.get(
    "",
    response_model=KeyList,
    summary="This account's API keys (never their secrets)",
    dependencies=[KeysManageScope],
)
async def list_keys(uow: UnitOfWorkDep, tenant: TenantDep) -> KeyList:
    keys = await tenants.list_api_keys(uow.session, tenant)
    return KeyList(data=[KeyView.of(api_key) for api_key in keys])


@router.post(
    "",
    status_code=201,
    response_model=NewKeyView,
    summary="Create an API key: the key itself is in this answer only",
    description=(
        "`scopes` default to all but `keys:manage`, and may name only scopes the calling key "
        "holds (403 `insufficient_scope` otherwise). `expires_at` or `expires_in` (seconds) "
        "makes the key stop working then (401 `key_expired`)."
    ),
    responses=error_responses(400),
)
async def create_key(
    body: NewKeyRequest, uow: UnitOfWorkDep, manager: KeysManagerDep, tenant: TenantDep
) -> NewKeyView:
    # The manager's own scopes bound what it may grant.
    expires_at = tenants.key_expiry(body.expires_at, body.expires_in, datetime.now(UTC))
    created = await tenants.create_api_key(
        uow.session,
        tenant,
        body.label,
        scopes=body.scopes,
        expires_at=expires_at,
        granted_by=manager.grant.scopes,
    )
    return NewKeyView(**KeyView.of(created.api_key).model_dump(), key=created.key)


@router.patch(
    "/{key_id}",
    response_model=KeyView,
    summary="Change an API key's label, scopes or expiry (at once, in every API process)",
    description=(
        "Only the fields given change, at least one. `scopes` replace the key's scopes and may "
        "add only scopes the calling key holds (403 `insufficient_scope`); a key may narrow "
        "itself. `expires_at` or `expires_in` (seconds) sets a new expiry, `expires_at: null` "
        "removes it; a longer life for a key holding scopes the calling key lacks is 403 "
        "`insufficient_scope`. 409 `key_revoked` for a revoked key."
    ),
    responses=error_responses(400, 404, 409),
)
async def update_key(
    key_id: uuid.UUID,
    body: KeyUpdate,
    uow: UnitOfWorkDep,
    manager: KeysManagerDep,
    tenant: TenantDep,
) -> KeyView:
    updated = await tenants.update_tenant_key(
        uow.session, tenant, key_id, body, granted_by=manager.grant.scopes
    )
    return KeyView.of(updated)


@router.delete(
    "/{key_id}",
    response_model=KeyView,
    summary="Revoke an API key of this account (at once, in every API process)",
    responses=error_responses(404),
    dependencies=[KeysManageScope],
)
async def revoke_key(key_id: uuid.UUID, uow: UnitOfWorkDep, tenant: TenantDep) -> KeyView:
    return KeyView.of(await tenants.revoke_tenant_key(uow.session, tenant, key_id))
