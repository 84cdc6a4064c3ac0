"""Request dependencies: the app state, one unit of work per request, the tenant, and the
scope each authenticated route requires of its key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.dependencies.models import Dependant
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.middleware import RATE_LIMIT_STATE
from api.state import AppState
from relight.core.config import Settings
from relight.core.errors import RelightError
from relight.core.models import Tenant
from relight.core.ratelimit import RateLimitPolicy
from relight.core.storage import presigner_for
from relight.core.storage.urls import UrlBuilder
from relight.core.unit_of_work import UnitOfWork, unit_of_work
from relight.tenants.auth_cache import KeyGrant, TenantSnapshot
from relight.tenants.scopes import Scope, check_not_expired, require
from relight.tenants.service import AuthenticatedKey, authenticate_grant, authenticate_key


class RateLimited(RelightError):
    status_code = 429
    code = "rate_limited"


# Dependencies are `async def` even when they do no I/O: FastAPI runs a plain `def` one in a
# worker thread, a hand-off that costs more than the function itself.
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.relight
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def request_unit_of_work(state: StateDep) -> AsyncIterator[UnitOfWork]:
    """The request's unit of work (`relight.core.unit_of_work`): committed, and its after-commit
    callbacks run, when the route returns; rolled back if it raises."""
    # scope="function": this commit happens before the response is sent.
    async with unit_of_work(state.sessionmaker) as uow:
        yield uow


UnitOfWorkDep = Annotated[UnitOfWork, Depends(request_unit_of_work, scope="function")]


def presented_key(x_api_key: str | None, authorization: str | None) -> str | None:
    """The API key from `x-api-key` (Segmind's header) or `Authorization: Bearer`."""
    if x_api_key is not None:
        return x_api_key
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return credentials.strip()
    return None


# The two ways to present a key, as OpenAPI security schemes (either one will do), so that
# generated clients send the key themselves instead of taking it on every call.
API_KEY_SCHEME = APIKeyHeader(
    name="x-api-key",
    scheme_name="ApiKey",
    description="Your Relight API key in Segmind's header",
    auto_error=False,
)
BEARER_SCHEME = HTTPBearer(
    scheme_name="Bearer",
    description="Your Relight API key as `Authorization: Bearer <key>`",
    auto_error=False,
)
# The `security` of an operation behind an API key, for routes that read their headers
# themselves (the submit routes) and so declare no security dependency.
API_KEY_SECURITY: list[dict[str, list[str]]] = [{"ApiKey": []}, {"Bearer": []}]

# Declared by the routes that take a key, for the spec; the key itself is read with
# `request_key`, the one rule every route (the submit routes too) reads it by.
ApiKeyHeaderDep = Annotated[str | None, Security(API_KEY_SCHEME)]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_SCHEME)]


def request_key(request: Request) -> str | None:
    return presented_key(request.headers.get("x-api-key"), request.headers.get("authorization"))


async def authenticated_key(
    request: Request, uow: UnitOfWorkDep, _api_key: ApiKeyHeaderDep, _bearer: BearerDep
) -> AuthenticatedKey:
    """The request's key, looked up in its unit of work (so a revoked key is refused at once),
    and its tenant. Its scopes are checked by the route's `require_scope` dependency."""
    return await authenticate_key(uow.session, request_key(request))


async def authenticated_tenant(
    key: Annotated[AuthenticatedKey, Depends(authenticated_key)],
) -> Tenant:
    return key.tenant


async def apply_rate_limit(
    request: Request, state: AppState, tenant: Tenant | TenantSnapshot, cost: int
) -> None:
    policy = RateLimitPolicy(requests_per_minute=tenant.requests_per_minute, burst=tenant.burst)
    await _spend(request, state, str(tenant.id), policy, cost, "rate limit exceeded")


async def spend_redelivery(request: Request, state: AppState, tenant: Tenant) -> None:
    """One redelivery of the tenant's own budget (`RELIGHT_WEBHOOK_REDELIVER_*`), else 429."""
    settings = state.settings
    policy = RateLimitPolicy(
        requests_per_minute=settings.webhook_redeliver_per_minute,
        burst=settings.webhook_redeliver_burst,
        name="redeliver",
    )
    await _spend(
        request, state, f"{tenant.id}:redeliver", policy, 1, "webhook redelivery budget spent"
    )


async def _spend(
    request: Request, state: AppState, key: str, policy: RateLimitPolicy, cost: int, what: str
) -> None:
    decision = await state.limiter.check(key, policy, cost=cost)
    if decision is None:
        return
    # The middleware writes this decision's headers (Retry-After too) on the answer.
    setattr(request.state, RATE_LIMIT_STATE, decision)
    if not decision.allowed:
        raise RateLimited(
            f"{what}: {policy.burst} requests at once, "
            f"{policy.requests_per_minute} per minute; retry in "
            f"{decision.headers()['Retry-After']} s"
        )


async def current_tenant(
    request: Request, state: StateDep, tenant: Annotated[Tenant, Depends(authenticated_tenant)]
) -> Tenant:
    """The authenticated tenant; reads (does not spend) its rate-limit allowance."""
    await apply_rate_limit(request, state, tenant, cost=0)
    return tenant


async def submitting_tenant(request: Request) -> TenantSnapshot:
    """The tenant whose API key the request presents, once the key is found to hold
    `relight:submit` and not to have expired, and after spending one request of its rate
    limit (429 if none). The submit routes' scope dependency: it takes only the `Request`, as
    FastAPI's parsing of declared header parameters costs more than the rest of it.

    A key seen lately comes from the process's auth cache (`RELIGHT_AUTH_CACHE_S`), which holds
    its scopes and expiry too; else it is looked up outside the request's transaction (one
    autocommit statement), so no transaction is open, nor a pooled connection held, while a
    client uploads an image."""
    state: AppState = request.app.state.relight
    raw_key = request_key(request)

    async def look_up() -> KeyGrant:
        async with state.autocommit_sessionmaker() as session:
            return await authenticate_grant(session, raw_key)

    grant = await state.auth_cache.get(raw_key, look_up) if raw_key else await look_up()
    # A cached grant may outlive its key's expiry: checked on every use.
    check_not_expired(grant.expires_at, datetime.now(UTC))
    require(grant.scopes, Scope.SUBMIT)
    await apply_rate_limit(request, state, grant.tenant, cost=1)
    return grant.tenant


# --- scopes: each authenticated public route declares exactly one -----------------------------
# (tests/architecture/test_route_scopes.py). A scope dependency carries `required_scope`.
SCOPE_ATTRIBUTE = "required_scope"
setattr(submitting_tenant, SCOPE_ATTRIBUTE, Scope.SUBMIT)

ScopeCheck = Callable[..., Awaitable[AuthenticatedKey]]
_SCOPE_CHECKS: dict[Scope, ScopeCheck] = {}


def require_scope(scope: Scope) -> ScopeCheck:
    """The dependency that admits a request whose key holds `scope` (403 `insufficient_scope`
    naming it otherwise) and answers the authenticated key; one per scope."""
    if scope is Scope.SUBMIT:
        raise ValueError("the submit routes depend on `submitting_tenant` (the cached path)")
    if scope not in _SCOPE_CHECKS:

        async def check(
            key: Annotated[AuthenticatedKey, Depends(authenticated_key)],
        ) -> AuthenticatedKey:
            require(key.grant.scopes, scope)
            return key

        check.__name__ = f"require_{scope.value.replace(':', '_')}"
        setattr(check, SCOPE_ATTRIBUTE, scope)
        _SCOPE_CHECKS[scope] = check
    return _SCOPE_CHECKS[scope]


async def key_unless_signed(
    request: Request, uow: UnitOfWorkDep, _api_key: ApiKeyHeaderDep, _bearer: BearerDep
) -> AuthenticatedKey | None:
    """For a route a signed URL also opens (an output image): None when the request carries a
    signature (the route checks it), else the key, which must hold `requests:read`."""
    if "signature" in request.query_params and "expires" in request.query_params:
        return None
    key = await authenticate_key(uow.session, request_key(request))
    require(key.grant.scopes, Scope.REQUESTS_READ)
    return key


setattr(key_unless_signed, SCOPE_ATTRIBUTE, Scope.REQUESTS_READ)

# What a route authenticates a tenant's key with: each checks the key in full (any route
# reaching one of them must also declare a scope).
KEY_AUTHENTICATORS: tuple[Callable[..., Any], ...] = (
    authenticated_key,
    submitting_tenant,
    key_unless_signed,
)


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _calls(dependency)


def route_scopes(dependant: Dependant) -> list[Scope]:
    """The scopes a route's dependencies (its `dependant`) require, at any depth, once per
    dependency."""
    found = {
        call: getattr(call, SCOPE_ATTRIBUTE)
        for call in _calls(dependant)
        if hasattr(call, SCOPE_ATTRIBUTE)
    }
    return list(found.values())


def route_authenticates_a_key(dependant: Dependant) -> bool:
    """Whether a route (its `dependant`) authenticates a tenant's API key."""
    return any(call in KEY_AUTHENTICATORS for call in _calls(dependant))


SubmittingTenantDep = Annotated[TenantSnapshot, Depends(submitting_tenant)]
RequestsReadScope = Depends(require_scope(Scope.REQUESTS_READ))
RequestsCancelScope = Depends(require_scope(Scope.REQUESTS_CANCEL))
WebhooksManageScope = Depends(require_scope(Scope.WEBHOOKS_MANAGE))
AccountReadScope = Depends(require_scope(Scope.ACCOUNT_READ))
KeysManageScope = Depends(require_scope(Scope.KEYS_MANAGE))
KeysManagerDep = Annotated[AuthenticatedKey, KeysManageScope]
KeyUnlessSignedDep = Annotated[AuthenticatedKey | None, Depends(key_unless_signed)]


TenantDep = Annotated[Tenant, Depends(current_tenant)]


def urls_for(request: Request, settings: Settings) -> UrlBuilder:
    """The URLs of this request's answers (the public base URL, else the request's own)."""
    base_url = settings.public_base_url or str(request.base_url)
    return UrlBuilder(
        base_url=base_url,
        secret_key=settings.secret_key,
        output_url_ttl_s=settings.output_url_ttl_s,
        presigner=presigner_for(settings),
    )


async def url_builder(request: Request, settings: SettingsDep) -> UrlBuilder:
    return urls_for(request, settings)


UrlsDep = Annotated[UrlBuilder, Depends(url_builder)]
