"""The operators' web page under `/admin/ui`: sign-in and the views (the actions are
`api.ui.actions`).

Thin on purpose: the numbers come from `relight.ops`.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from redis.exceptions import RedisError

from api.deps import StateDep, UnitOfWorkDep, urls_for
from api.signin_throttle import client_address
from api.ui import session as sessions
from api.ui.pages import (
    PAGE_OFF,
    PREFIX,
    STATIC,
    LoginRequired,
    PageRefused,
    install_page_handlers,
    render,
    see_other,
)
from api.ui.session import OperatorSession
from relight.core.params import Backend
from relight.core.text import unstorable_character
from relight.credits import service as credits
from relight.jobs.worker_heartbeat import STALE_AFTER_S
from relight.ops.nodes import node_statuses
from relight.ops.overview import load_overview
from relight.ops.requests import (
    BACKEND_SIDES,
    STATUS_WORDS,
    BadPageParameter,
    RequestFilters,
    list_requests,
    request_exists,
    request_id_in,
    request_record,
    stored_status,
)
from relight.ops.tenants import tenants_with_usage
from relight.ops.webhook_failures import failing_deliveries
from relight.ops.workers import WorkerStatus, worker_statuses
from relight.tenants import service as tenants
from relight.usage.schemas import GroupBy
from relight.usage.service import usage_report, usage_window


async def current_operator(request: Request, state: StateDep) -> OperatorSession:
    """The signed-in operator, once every parameter of the request is text that can be stored
    (every view and action depends on this, so none passes a NUL to a query)."""
    if not state.settings.admin_token:
        raise PageRefused(PAGE_OFF)
    operator = await sessions.read_session(
        state.settings, state.redis, request.cookies.get(sessions.COOKIE_NAME)
    )
    if operator is None:
        raise LoginRequired
    await check_page_text(request)
    return operator


async def check_page_text(request: Request) -> None:
    """The one text rule (`relight.core.text`) for the path, query and form parameters of a page:
    a parameter that cannot be stored is a 400 naming it, before any query runs."""
    parameters: list[tuple[str, Any]] = [
        *request.path_params.items(),
        *request.query_params.multi_items(),
    ]
    if request.method == "POST":
        # FastAPI has read (and cached) the form before it runs this dependency.
        parameters += (await request.form()).multi_items()
    for name, value in parameters:
        problem = unstorable_character(name) or (
            unstorable_character(value) if isinstance(value, str) else None
        )
        if problem is not None:
            shown = name.encode("unicode_escape").decode("ascii")
            raise PageRefused(f"{shown}: {problem}.", status_code=400)


OperatorDep = Annotated[OperatorSession, Depends(current_operator)]
CsrfField = Annotated[str | None, Form()]


def check_csrf(operator: OperatorSession, csrf_token: str | None) -> None:
    if not sessions.csrf_matches(operator, csrf_token):
        raise PageRefused("This form has expired or did not come from this page; reload it.")


router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/login")
async def login_form(request: Request, state: StateDep) -> Response:
    if not state.settings.admin_token:
        raise PageRefused(PAGE_OFF)
    return render(request, "login.html", None)


@router.post("/login")
async def login(
    request: Request, state: StateDep, token: Annotated[str, Form(max_length=500)] = ""
) -> Response:
    if not state.settings.admin_token:
        raise PageRefused(PAGE_OFF)
    # Throttled per client address, with the admin API (`api.signin_throttle`); an empty form
    # is no guess, as on the API: neither counted nor throttled.
    address, where = client_address(request.scope.get("client")), "operators' page"
    throttle = state.signin_throttle if token.strip() else None
    refusal = await throttle.refusal(address, where) if throttle else None
    if refusal is None and not sessions.token_matches(state.settings, token):
        if throttle:
            refusal = await throttle.record_failure(address, where)
        if refusal is None:
            return render(request, "login.html", None, 401, error="That is not the admin token.")
    if refusal is not None:
        refused = render(
            request,
            "login.html",
            None,
            429,
            error="Too many wrong admin tokens from this address: sign-in is refused for "
            f"{refusal.retry_after_s} s. Wait, then try again.",
        )
        refused.headers["Retry-After"] = str(refusal.retry_after_s)
        return refused
    _, cookie = sessions.new_session(state.settings)
    response = see_other("")
    response.set_cookie(
        sessions.COOKIE_NAME,
        cookie,
        max_age=sessions.SESSION_TTL_S,
        path=sessions.COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or state.settings.environment == "production",
    )
    return response


@router.post("/logout")
async def logout(state: StateDep, operator: OperatorDep, csrf_token: CsrfField = None) -> Response:
    check_csrf(operator, csrf_token)
    await sessions.end_session(state.settings, state.redis, operator)
    response = see_other("/login")
    response.delete_cookie(sessions.COOKIE_NAME, path=sessions.COOKIE_PATH)
    return response


@router.get("")
async def overview(
    request: Request, state: StateDep, uow: UnitOfWorkDep, operator: OperatorDep
) -> Response:
    queue_entries: int | None
    workers: list[WorkerStatus] | None
    try:
        async with asyncio.timeout(1.0):
            queue_entries = int(await state.redis.zcard(state.settings.queue_name))
            workers = await worker_statuses(state.redis, state.settings.queue_name)
    except (RedisError, OSError, TimeoutError):
        queue_entries = workers = None
    data = await load_overview(uow.session, datetime.now(UTC), queue_entries)
    return render(request, "overview.html", operator, overview=data, workers=workers)


def _page_link(request: Request, **changes: str | None) -> str:
    """This view's URL with `changes` to its query (None drops a parameter)."""
    query = {**request.query_params, **changes}
    kept = {name: value for name, value in query.items() if value}
    return f"{request.url.path}?{urlencode(kept)}" if kept else request.url.path


@router.get("/requests")
async def requests_list(
    request: Request,
    uow: UnitOfWorkDep,
    operator: OperatorDep,
    tenant: str = "",
    status: str = "",
    backend: str = "",
    side: str = "either",
    q: str = "",
    after: str = "",
    before: str = "",
) -> Response:
    if q.strip():
        # A search by id goes straight to the request (or says there is none).
        found = request_id_in(q)
        if not await request_exists(uow.session, found):
            return render(request, "missing.html", operator, 404, what=f"request {found}")
        return see_other(f"/requests/{found}")
    if backend and backend not in {b.value for b in Backend}:
        raise BadPageParameter(f"backend {backend!r} is not one of {', '.join(Backend)}.")
    if side not in BACKEND_SIDES:
        raise BadPageParameter(f"side {side!r} is not one of {', '.join(BACKEND_SIDES)}.")
    filters = RequestFilters(
        tenant=tenant.strip() or None,
        status=stored_status(status) if status else None,
        backend=backend or None,
        backend_side=side,
    )
    page = await list_requests(uow.session, filters, after=after, before=before)
    return render(
        request,
        "requests.html",
        operator,
        page=page,
        filters=filters,
        statuses=STATUS_WORDS,
        backends=[b.value for b in Backend],
        sides=BACKEND_SIDES,
        older_link=page.older and _page_link(request, after=page.older, before=None),
        newer_link=page.newer and _page_link(request, before=page.newer, after=None),
    )


@router.get("/requests/{request_id}")
async def request_detail(
    request: Request,
    request_id: uuid.UUID,
    state: StateDep,
    uow: UnitOfWorkDep,
    operator: OperatorDep,
) -> Response:
    record = await request_record(uow.session, request_id)
    if record is None:
        return render(request, "missing.html", operator, 404, what=f"request {request_id}")
    return render(
        request, "request.html", operator, record=record, urls=urls_for(request, state.settings)
    )


@router.get("/workers")
async def workers(request: Request, state: StateDep, operator: OperatorDep) -> Response:
    try:
        async with asyncio.timeout(2.0):
            statuses = await worker_statuses(state.redis, state.settings.queue_name)
        error = None
    except (RedisError, OSError, TimeoutError):
        statuses, error = [], "Redis did not answer: the workers' heartbeats are unknown."
    return render(
        request,
        "workers.html",
        operator,
        workers=statuses,
        error=error,
        stale_after_s=STALE_AFTER_S,
    )


@router.get("/webhooks")
async def webhook_failures(
    request: Request, uow: UnitOfWorkDep, operator: OperatorDep, after: str = "", before: str = ""
) -> Response:
    page = await failing_deliveries(uow.session, after=after, before=before)
    return render(
        request,
        "webhooks.html",
        operator,
        page=page,
        older_link=page.older and _page_link(request, after=page.older, before=None),
        newer_link=page.newer and _page_link(request, before=page.newer, after=None),
    )


@router.get("/nodes")
async def nodes(request: Request, state: StateDep, operator: OperatorDep) -> Response:
    try:
        async with asyncio.timeout(2.0):
            statuses = await node_statuses(state.redis, state.settings)
        error = None
    except (RedisError, OSError, TimeoutError):
        statuses, error = [], "Redis did not answer: node heartbeats and slots are unknown."
    return render(request, "nodes.html", operator, nodes=statuses, error=error)


@router.get("/tenants")
async def tenants_list(request: Request, uow: UnitOfWorkDep, operator: OperatorDep) -> Response:
    since = datetime.now(UTC) - timedelta(days=1)
    return render(
        request, "tenants.html", operator, rows=await tenants_with_usage(uow.session, since)
    )


async def tenant_page(
    request: Request,
    uow: UnitOfWorkDep,
    operator: OperatorSession,
    name: str,
    status_code: int = 200,
    **context: Any,
) -> Response:
    """A tenant's page: its record, API keys, ledger and action forms (`api.ui.actions`
    shows it again with an action's error)."""
    try:
        tenant = await tenants.find_tenant(uow.session, name)
    except tenants.TenantNotFound:
        return render(request, "missing.html", operator, 404, what=f"tenant {name!r}")
    ledger = await credits.list_entries(uow.session, tenant.id, limit=50, before=None)
    keys = await tenants.list_api_keys(uow.session, tenant)
    usage = await usage_report(uow.session, tenant.id, *usage_window(None, None), GroupBy.DAY)
    return render(
        request,
        "tenant.html",
        operator,
        status_code,
        tenant=tenant,
        ledger=ledger,
        keys=keys,
        backends=[b.value for b in Backend if b is not Backend.AUTO],
        usage=usage,
        **context,
    )


@router.get("/tenants/{name}")
async def tenant_detail(
    request: Request, name: str, uow: UnitOfWorkDep, operator: OperatorDep
) -> Response:
    return await tenant_page(request, uow, operator, name)


def install_ui(app: FastAPI) -> None:
    """Add the page, its assets (served from the package) and its answers that are not
    pages: the redirect to sign in, and the refusal."""
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="admin-ui-static")
    install_page_handlers(app)
