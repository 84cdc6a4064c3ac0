"""The operators' page's actions: cancel a request, redeliver its webhooks (or a batch's, from
the webhook failures), revoke a key, change a tenant's limits, backends or weight, grant
credits, suspend or resume.

Every action is a form that POSTs with the session's CSRF token (403 page otherwise). The
first POST rehearses the action (`relight.ops.actions.rehearse`) and answers a confirmation
page saying what will happen, with the form's values in hidden fields and `confirm=yes`; the
second POST does it and redirects to the page it came from with a flash saying what happened
(POST-redirect-GET). A confirmation is good for one submission (a double click acts once).
A value the services refuse re-shows the tenant's page with the reason (or, on a request's
page or the webhook failures, comes back as an error flash): never a 500, never JSON.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from pydantic import ValidationError
from redis.exceptions import RedisError

from api.deps import StateDep, UnitOfWorkDep
from api.state import AppState
from api.ui.flash import with_flash
from api.ui.pages import PREFIX, render, see_other
from api.ui.routes import CsrfField, OperatorDep, check_csrf, tenant_page
from api.ui.session import OperatorSession
from relight.core.errors import RelightError
from relight.core.models import Tenant, TenantStatus
from relight.core.storage.urls import UrlBuilder
from relight.credits.schemas import CreditMovement
from relight.ops import actions
from relight.ops.actions import Outcome, rehearse
from relight.tenants import service as tenants
from relight.tenants.schemas import LimitsUpdate, WeightUpdate

logger = logging.getLogger(__name__)

router = APIRouter(prefix=PREFIX, include_in_schema=False)

ConfirmField = Annotated[str, Form()]
FormText = Annotated[str, Form()]
# Fields of the form that are not the action's values.
NOT_VALUES = {"csrf_token", "confirm", "once"}
# How long a confirmation's one-time mark is kept (a confirmation older than that may be
# submitted again: by then it is a deliberate act, not a double click).
ONCE_TTL_S = 3600
ALREADY_DONE = "This confirmation was submitted already (a second click?): nothing was done again."


def _confirmed(confirm: str) -> bool:
    return confirm == "yes"


async def _first_submission(request: Request) -> bool:
    """Whether this confirmed form is the first one sent from its confirmation page: a
    confirmation carries a one-time mark (`once`), so a double click grants once. A form
    without one (a script's) is not checked; if Redis does not answer, it is let through."""
    once = (await request.form()).get("once")
    if not isinstance(once, str) or not once:
        return True
    state: AppState = request.app.state.relight
    key = f"{state.settings.queue_name}:admin-ui:once:{once}"
    try:
        return bool(await state.redis.set(key, 1, nx=True, ex=ONCE_TTL_S))
    except (RedisError, OSError):
        logger.warning("could not check a confirmation's one-time mark in Redis")
        return True


async def _confirmation(
    request: Request,
    operator: OperatorSession,
    outcome: Outcome,
    *,
    title: str,
    button: str,
    back: str,
    section: str,
) -> Response:
    """The page that asks: what the action will do, and the same form again, confirmed."""
    form = await request.form()
    values = [
        (name, value)
        for name, value in form.multi_items()
        if name not in NOT_VALUES and isinstance(value, str)
    ]
    return render(
        request,
        "confirm.html",
        operator,
        once=secrets.token_urlsafe(18),
        title=title,
        question=outcome.would,
        action=request.url.path,
        values=values,
        button=button,
        back=back,
        active=section,
    )


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, error['loc'])) or 'value'}: {error['msg']}" for error in exc.errors()
    )


# --- a request's and a batch's actions ------------------------------------------------------


async def _owner_action(
    request: Request,
    uow: UnitOfWorkDep,
    operator: OperatorSession,
    csrf_token: str | None,
    confirm: str,
    act: Callable[[], Awaitable[Outcome]],
    *,
    back: str,
    missing: str,
    section: str,
    title: str,
    button: str,
) -> Response:
    """An action on one request or batch: confirmed, done once, then back to `back` with a
    flash; `missing` names it on the 404 page, a refusal comes back as an error flash."""
    check_csrf(operator, csrf_token)
    try:
        if not _confirmed(confirm):
            outcome = await rehearse(uow.session, act)
            return await _confirmation(
                request, operator, outcome, title=title, button=button, back=back,
                section=section,
            )  # fmt: skip
        if not await _first_submission(request):
            return see_other(with_flash(operator, back, ALREADY_DONE, "error"))
        outcome = await act()
    except RelightError as exc:
        await uow.rollback()
        if exc.status_code == 404:
            return render(request, "missing.html", operator, 404, what=missing)
        return see_other(with_flash(operator, back, exc.message, "error"))
    return see_other(with_flash(operator, back, outcome.did))


def _redelivering(
    state: AppState, uow: UnitOfWorkDep, redeliver: Callable[[], Awaitable[actions.Redelivery]]
) -> Callable[[], Awaitable[Outcome]]:
    """A redelivery as an action: its deliveries queued once the real one commits (dropped
    with the rehearsal's savepoint)."""

    async def act() -> Outcome:
        redelivery = await redeliver()
        uow.after_commit(partial(state.enqueue_deliveries, redelivery.delivery_ids))
        return redelivery.outcome

    return act


@router.post("/requests/{request_id}/cancel")
async def cancel_request(
    request: Request,
    request_id: uuid.UUID,
    state: StateDep,
    uow: UnitOfWorkDep,
    operator: OperatorDep,
    csrf_token: CsrfField = None,
    confirm: ConfirmField = "",
) -> Response:
    act = partial(
        actions.cancel_request,
        uow.session,
        request_id,
        UrlBuilder.background(state.settings),
        redis=state.redis,
        queue_name=state.settings.queue_name,
        operator=operator.log_id,
    )
    return await _owner_action(
        request, uow, operator, csrf_token, confirm, act, back=f"/requests/{request_id}",
        missing=f"request {request_id}", section="requests",
        title="Cancel a request", button="Cancel the request",
    )  # fmt: skip


@router.post("/requests/{request_id}/redeliver")
async def redeliver_webhooks(
    request: Request,
    request_id: uuid.UUID,
    state: StateDep,
    uow: UnitOfWorkDep,
    operator: OperatorDep,
    csrf_token: CsrfField = None,
    confirm: ConfirmField = "",
) -> Response:
    redeliver = partial(
        actions.redeliver_webhooks,
        uow.session,
        request_id,
        UrlBuilder.background(state.settings),
        operator=operator.log_id,
    )
    return await _owner_action(
        request, uow, operator, csrf_token, confirm, _redelivering(state, uow, redeliver),
        back=f"/requests/{request_id}", missing=f"request {request_id}", section="requests",
        title="Redeliver webhooks", button="Send them again",
    )  # fmt: skip


@router.post("/batches/{batch_id}/redeliver")
async def redeliver_batch_webhooks(
    request: Request,
    batch_id: uuid.UUID,
    state: StateDep,
    uow: UnitOfWorkDep,
    operator: OperatorDep,
    csrf_token: CsrfField = None,
    confirm: ConfirmField = "",
) -> Response:
    """A batch's webhook sent again, from its row of the webhook failures (where it goes back)."""
    redeliver = partial(
        actions.redeliver_batch_webhooks, uow.session, batch_id, operator=operator.log_id
    )
    return await _owner_action(
        request, uow, operator, csrf_token, confirm, _redelivering(state, uow, redeliver),
        back="/webhooks", missing=f"batch {batch_id}", section="webhooks",
        title="Redeliver a batch's webhook", button="Send it again",
    )  # fmt: skip


# --- a tenant's actions ----------------------------------------------------------------------

TenantAct = Callable[[Tenant], Awaitable[Outcome]]


async def _tenant_action(
    request: Request,
    uow: UnitOfWorkDep,
    operator: OperatorSession,
    name: str,
    csrf_token: str | None,
    confirm: str,
    act: TenantAct,
    *,
    title: str,
    button: str,
) -> Response:
    check_csrf(operator, csrf_token)
    try:
        tenant = await tenants.find_tenant(uow.session, name)
    except tenants.TenantNotFound:
        return render(request, "missing.html", operator, 404, what=f"tenant {name!r}")
    tenant_name = tenant.name  # a rollback below expires the row
    back = f"/tenants/{quote(tenant_name, safe='')}"
    try:
        if not _confirmed(confirm):
            outcome = await rehearse(uow.session, partial(act, tenant))
            return await _confirmation(
                request, operator, outcome, title=title, button=button, back=back,
                section="tenants",
            )  # fmt: skip
        if not await _first_submission(request):
            return see_other(with_flash(operator, back, ALREADY_DONE, "error"))
        outcome = await act(tenant)
    except ValidationError as exc:
        error, status_code = _problems(exc), 422
    except RelightError as exc:
        error, status_code = exc.message, exc.status_code
    else:
        return see_other(with_flash(operator, back, outcome.did))
    await uow.rollback()
    form = await request.form()
    entered = {key: value for key, value in form.items() if isinstance(value, str)}
    return await tenant_page(
        request, uow, operator, tenant_name, status_code, error=error, form=entered
    )


@router.post("/tenants/{name}/keys/{prefix}/revoke")
async def revoke_key(
    request: Request,
    name: str,
    prefix: str,
    uow: UnitOfWorkDep,
    operator: OperatorDep,
    csrf_token: CsrfField = None,
    confirm: ConfirmField = "",
) -> Response:
    async def act(tenant: Tenant) -> Outcome:
        return await actions.revoke_key(uow.session, tenant, prefix, operator=operator.log_id)

    return await _tenant_action(
        request, uow, operator, name, csrf_token, confirm, act,
        title="Revoke an API key", button="Revoke the key",
    )  # fmt: skip


@router.post("/tenants/{name}/limits")
async def change_limits(
    request: Request,
    name: str,
    uow: UnitOfWorkDep,
    operator: OperatorDep,
    csrf_token: CsrfField = None,
    confirm: ConfirmField = "",
    requests_per_minute: FormText = "",
    burst: FormText = "",
    max_in_flight: FormText = "",
) -> Response:
    async def act(tenant: Tenant) -> Outcome:
        entered = {
            "requests_per_minute": requests_per_minute,
            "burst": burst,
            "max_in_flight": max_in_flight,
        }
        # An empty box keeps that limit.
        limits = LimitsUpdate.model_validate(
            {key: value.strip() for key, value in entered.items() if value.strip()}
        )
        return await actions.change_limits(uow.session, tenant, limits, operator=operator.log_id)

    return await _tenant_action(
        request, uow, operator, name, csrf_token, confirm, act,
        title="Change limits", button="Change the limits",
    )  # fmt: skip


@router.post("/tenants/{name}/backends")
async def change_backends(
    request: Request,
    name: str,
    uow: UnitOfWorkDep,
    operator: OperatorDep,
    csrf_token: CsrfField = None,
    confirm: ConfirmField = "",
    backends: Annotated[list[str] | None, Form()] = None,
) -> Response:
    async def act(tenant: Tenant) -> Outcome:
        return await actions.change_backends(
            uow.session, tenant, backends or [], operator=operator.log_id
        )

    return await _tenant_action(
        request, uow, operator, name, csrf_token, confirm, act,
        title="Change backends", button="Change the backends",
    )  # fmt: skip


@router.post("/tenants/{name}/weight")
async def change_weight(
    request: Request,
    name: str,
    state: StateDep,
    uow: UnitOfWorkDep,
    operator: OperatorDep,
    csrf_token: CsrfField = None,
    confirm: ConfirmField = "",
    weight: FormText = "",
) -> Response:
    async def act(tenant: Tenant) -> Outcome:
        update = WeightUpdate.model_validate({"weight": weight.strip() or None})
        return await actions.change_weight(
            uow.session,
            tenant,
            update.weight,
            redis=state.redis,
            queue_name=state.settings.queue_name,
            operator=operator.log_id,
        )

    return await _tenant_action(
        request, uow, operator, name, csrf_token, confirm, act,
        title="Change the weight", button="Change the weight",
    )  # fmt: skip


@router.post("/tenants/{name}/credits")
async def move_credits(
    request: Request,
    name: str,
    uow: UnitOfWorkDep,
    operator: OperatorDep,
    csrf_token: CsrfField = None,
    confirm: ConfirmField = "",
    amount: FormText = "",
    reason: FormText = "",
    kind: FormText = "grant",
) -> Response:
    async def act(tenant: Tenant) -> Outcome:
        movement = CreditMovement.model_validate(
            {"amount": amount.strip() or None, "reason": reason.strip(), "kind": kind}
        )
        return await actions.move_credits(uow.session, tenant, movement, operator=operator.log_id)

    return await _tenant_action(
        request, uow, operator, name, csrf_token, confirm, act,
        title="Grant credits" if kind == "grant" else "Adjust credits", button="Record it",
    )  # fmt: skip


@router.post("/tenants/{name}/suspend")
async def suspend_tenant(
    request: Request,
    name: str,
    uow: UnitOfWorkDep,
    operator: OperatorDep,
    csrf_token: CsrfField = None,
    confirm: ConfirmField = "",
) -> Response:
    async def act(tenant: Tenant) -> Outcome:
        return await actions.set_status(
            uow.session, tenant, TenantStatus.SUSPENDED, operator=operator.log_id
        )

    return await _tenant_action(
        request, uow, operator, name, csrf_token, confirm, act,
        title="Suspend a tenant", button="Suspend",
    )  # fmt: skip


@router.post("/tenants/{name}/resume")
async def resume_tenant(
    request: Request,
    name: str,
    uow: UnitOfWorkDep,
    operator: OperatorDep,
    csrf_token: CsrfField = None,
    confirm: ConfirmField = "",
) -> Response:
    async def act(tenant: Tenant) -> Outcome:
        return await actions.set_status(
            uow.session, tenant, TenantStatus.ACTIVE, operator=operator.log_id
        )

    return await _tenant_action(
        request, uow, operator, name, csrf_token, confirm, act,
        title="Resume a tenant", button="Resume",
    )  # fmt: skip


@router.post("/tenants/{name}/{action}")
async def unknown_tenant_action(
    request: Request, action: str, operator: OperatorDep, csrf_token: CsrfField = None
) -> Response:
    """Any other action on a tenant: a 404 page (declared last, after every action), its
    parameters checked like the others' (`current_operator`)."""
    check_csrf(operator, csrf_token)
    return render(request, "missing.html", operator, 404, what=f"action {action!r}")
