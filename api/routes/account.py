"""The tenant's own account: credits (Segmind-compatible) and limits and usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Response

from api.deps import AccountReadScope, TenantDep, UnitOfWorkDep
from api.errors import AUTHENTICATED, error_responses
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
from relight.credits.schemas import UserCredits
from relight.credits.service import get_balance
from relight.jobs.queries import usage_since
from relight.tenants.schemas import AccountView, TenantView, UsageView
from relight.usage.schemas import UsageReport

router = APIRouter(tags=["account"], responses=error_responses(*AUTHENTICATED))


@router.get(
    "/v1/get-user-credits",
    response_model=UserCredits,
    summary="Credit balance (Segmind)",
    dependencies=[AccountReadScope],
)
async def get_user_credits(uow: UnitOfWorkDep, tenant: TenantDep) -> UserCredits:
    return UserCredits(credits=await get_balance(uow.session, tenant.id))


@router.get(
    "/v2/account",
    response_model=AccountView,
    summary="Balance, limits and usage",
    dependencies=[AccountReadScope],
)
async def get_account(uow: UnitOfWorkDep, tenant: TenantDep) -> AccountView:
    counts, charged = await usage_since(
        uow.session, tenant.id, datetime.now(UTC) - timedelta(days=30)
    )
    view = TenantView.of(tenant)
    return AccountView(
        tenant_id=tenant.id,
        name=tenant.name,
        status=tenant.status,
        credits=tenant.credit_balance,
        limits=view.limits,
        usage=UsageView(
            active_jobs=tenant.active_jobs, requests_30d=counts, credits_charged_30d=charged
        ),
    )


@router.get(
    "/v2/usage",
    response_model=UsageReport,
    summary="Usage by day, backend or key (JSON or CSV)",
    description=USAGE_DESCRIPTION,
    responses=USAGE_RESPONSES,
    dependencies=[AccountReadScope],
)
async def get_usage(
    uow: UnitOfWorkDep, tenant: TenantDep, query: UsageQueryDep
) -> UsageReport | Response:
    return await usage_answer(uow.session, tenant.id, query, filename="usage")


@router.get(
    "/v2/usage.csv",
    response_class=Response,
    summary="Usage by day, backend or key as CSV",
    description=USAGE_CSV_DESCRIPTION,
    responses=USAGE_CSV_RESPONSES,
    dependencies=[AccountReadScope],
)
async def get_usage_csv(uow: UnitOfWorkDep, tenant: TenantDep, query: UsageCsvQueryDep) -> Response:
    return await usage_csv_answer(uow.session, tenant.id, query, filename="usage")
