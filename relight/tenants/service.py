"""Tenant and API-key management, and authentication of a presented key.

Every function works in the caller's unit of work (it flushes, never commits). Changes that
alter what an authenticated request may do (status, limits, keys, backends) are announced
(`announce_change`) so that every api process drops its cached snapshot of the tenant."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from relight.core.egress import EgressPolicy, check_url
from relight.core.errors import Conflict, InvalidParameter, RelightError, Unauthorized
from relight.core.models import ApiKey, Tenant, TenantStatus
from relight.core.params import Backend, Priority
from relight.core.unit_of_work import after_commit
from relight.credits.service import grant_credits
from relight.tenants import repository
from relight.tenants.auth_cache import (
    KeyGrant,
    TenantSnapshot,
    forget_tenant_everywhere_in_process,
)
from relight.tenants.keys import generate_key, parse_key, secret_matches
from relight.tenants.names import skeleton
from relight.tenants.schemas import (
    WEIGHT_MAX,
    WEIGHT_MIN,
    KeyUpdate,
    LimitsUpdate,
    tenant_name_problem,
)
from relight.tenants.scopes import (
    DEFAULT_SCOPES,
    MAX_KEY_LIFETIME,
    InsufficientScope,
    check_not_expired,
    normalized,
    scope_problem,
)
from relight.tenants.weight_mirror import mirror_tenant_weight

logger = logging.getLogger(__name__)

LAST_USED_RESOLUTION = timedelta(minutes=1)


class TenantNotFound(RelightError):
    status_code = 404
    code = "tenant_not_found"


class KeyNotFound(RelightError):
    status_code = 404
    code = "key_not_found"


@dataclass(frozen=True)
class CreatedKey:
    key: str
    api_key: ApiKey


async def announce_change(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """Tell every API process, when (and only if) the caller's transaction commits, that what
    it may have cached about this tenant and its keys is stale (see `auth_cache`)."""
    await repository.notify_changed(session, tenant_id)
    after_commit(session, lambda: forget_tenant_everywhere_in_process(tenant_id))


async def create_tenant(
    session: AsyncSession,
    name: str,
    credits: int = 0,
    limits: LimitsUpdate | None = None,
    weight: int = 1,
) -> Tenant:
    """A new active tenant named `name`, with an opening grant of `credits` (a ledger entry),
    optional limits and a dispatch weight; 409 `tenant_exists` when the name is taken."""
    problem = tenant_name_problem(name)
    if problem is not None:
        raise InvalidParameter(f"name: {problem}", extra={"field": "name"})
    if credits < 0:
        raise RelightError("credits must not be negative", status_code=422)
    _check_weight(weight)
    await _refuse_lookalike(session, name)
    tenant = Tenant(name=name, credit_balance=0, weight=weight)
    if limits is not None:
        for field, value in limits.model_dump(exclude_none=True).items():
            setattr(tenant, field, value)
    if not await repository.insert_tenant(session, tenant):
        raise Conflict(f"a tenant named {name!r} exists already", code="tenant_exists")
    if credits:
        await grant_credits(session, tenant.id, credits, reason="opening grant")
    # With every column the database filled in (and the balance the grant moved).
    await repository.refresh(session, tenant)
    return tenant


async def _refuse_lookalike(session: AsyncSession, name: str) -> None:
    """409 `tenant_exists` when `name` looks like an existing tenant's name (same skeleton,
    `relight.tenants.names`). Tenant creations take turns (a transaction-scoped advisory
    lock), so two lookalikes created at once cannot both pass."""
    await repository.lock_tenant_names(session)
    wanted = skeleton(name)
    for existing in await repository.tenant_names(session):
        if existing != name and skeleton(existing) == wanted:
            raise Conflict(
                f"a tenant named {existing!r} exists already, and {name!r} looks like it",
                code="tenant_exists",
                extra={"field": "name"},
            )


async def find_tenant(session: AsyncSession, name_or_id: str) -> Tenant:
    """A tenant by id when the text reads as a UUID, else by name. No name reads as an id
    (`tenant_name_problem`), so the two never meet; should an older row carry such a name,
    the id wins, and that row is reached by its own id."""
    try:
        tenant_id = uuid.UUID(name_or_id)
    except ValueError:
        found = await repository.get_by_name(session, name_or_id)
    else:
        found = await repository.get_by_id(session, tenant_id)
    if found is None:
        raise TenantNotFound(f"no tenant {name_or_id!r}")
    return found


async def list_tenants(session: AsyncSession) -> list[Tenant]:
    """Every tenant, oldest first."""
    return await repository.list_tenants(session)


async def set_tenant_status(session: AsyncSession, tenant: Tenant, status: TenantStatus) -> Tenant:
    """Suspend (submits answer 403; running jobs finish) or resume a tenant."""
    tenant.status = status.value
    await repository.flush(session)
    await announce_change(session, tenant.id)
    return tenant


async def set_limits(session: AsyncSession, tenant: Tenant, limits: LimitsUpdate) -> Tenant:
    """Change the given limits and keep the others; takes effect on the next request."""
    values = limits.model_dump(exclude_none=True)
    if not values:
        raise InvalidParameter(
            "give at least one of requests_per_minute, burst, max_in_flight",
            extra={"field": "limits"},
        )
    for field, value in values.items():
        setattr(tenant, field, value)
    await repository.flush(session)
    await announce_change(session, tenant.id)
    return tenant


def _check_weight(weight: int) -> None:
    if not WEIGHT_MIN <= weight <= WEIGHT_MAX:
        raise InvalidParameter(
            f"weight must be {WEIGHT_MIN} to {WEIGHT_MAX}, not {weight}", extra={"field": "weight"}
        )


async def set_weight(session: AsyncSession, tenant: Tenant, weight: int) -> Tenant:
    """How many jobs the tenant starts per turn of fair dispatch. The caller tells the workers
    once this commits (`mirror_weight`); until then they go by the old weight."""
    _check_weight(weight)
    tenant.weight = weight
    await repository.flush(session)
    await announce_change(session, tenant.id)
    return tenant


async def mirror_weight(redis: Redis, queue_name: str, tenant_id: uuid.UUID, weight: int) -> None:
    """Copy a committed weight to the Redis hash the workers' claim reads. Best effort: Postgres
    holds the weight, and the tenant's next submit copies it again if this fails."""
    try:
        await mirror_tenant_weight(redis, queue_name, tenant_id, weight)
    except (RedisError, OSError):
        logger.warning(
            "could not copy tenant %s's weight to Redis; its next submit will", tenant_id
        )


def mirror_weight_after_commit(
    session: AsyncSession, redis: Redis, queue_name: str, tenant: Tenant
) -> None:
    """Tell the workers the tenant's weight once the caller's transaction commits (never one
    that rolls back): `mirror_weight`, as an after-commit callback."""
    after_commit(session, partial(mirror_weight, redis, queue_name, tenant.id, tenant.weight))


async def set_default_webhook(
    session: AsyncSession, tenant: Tenant, url: str | None, policy: EgressPolicy
) -> Tenant:
    """Where the tenant's webhooks go when a request names no webhook_url (None: nowhere)."""
    if url is not None:
        check_url(url, policy, field="url")
    tenant.webhook_url = url
    await repository.flush(session)
    await announce_change(session, tenant.id)
    return tenant


async def set_allowed_backends(
    session: AsyncSession, tenant: Tenant, backends: list[str]
) -> Tenant:
    """The backends the tenant's requests may run on (`auto` chooses among them)."""
    known = {backend.value for backend in Backend} - {Backend.AUTO.value}
    unknown = sorted(set(backends) - known)
    if unknown or not backends:
        raise InvalidParameter(
            f"backends must be a non-empty list of {', '.join(sorted(known))}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
            extra={"field": "backends"},
        )
    tenant.allowed_backends = sorted(set(backends))
    await repository.flush(session)
    await announce_change(session, tenant.id)
    return tenant


async def set_allowed_lanes(session: AsyncSession, tenant: Tenant, lanes: list[str]) -> Tenant:
    """The priority lanes the tenant's requests may use (`high`, `normal`, `low`); a request
    in another lane is refused (403 `priority_not_allowed`)."""
    known = [lane.value for lane in Priority]
    unknown = sorted(set(lanes) - set(known))
    if unknown or not lanes:
        raise InvalidParameter(
            f"lanes must be a non-empty list of {', '.join(known)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
            extra={"field": "lanes"},
        )
    tenant.allowed_lanes = [lane for lane in known if lane in set(lanes)]
    await repository.flush(session)
    await announce_change(session, tenant.id)
    return tenant


async def list_api_keys(session: AsyncSession, tenant: Tenant) -> list[ApiKey]:
    """The tenant's keys (revoked ones too), oldest first; secrets are never stored."""
    return await repository.list_api_keys(session, tenant.id)


def key_expiry(
    expires_at: datetime | None, expires_in_s: int | None, now: datetime
) -> datetime | None:
    """When a new key stops working: `expires_at`, or `expires_in_s` from `now`, or never.
    422 naming the field for both at once, a naive time, a past time or one beyond ten years."""
    if expires_at is not None and expires_in_s is not None:
        raise InvalidParameter(
            "give expires_at or expires_in, not both", extra={"field": "expires_in"}
        )
    if expires_in_s is not None:
        expires_at = now + timedelta(seconds=expires_in_s)
    if expires_at is None:
        return None
    if expires_at.tzinfo is None:
        raise InvalidParameter(
            "expires_at needs a time zone (e.g. 2027-01-01T00:00:00Z)",
            extra={"field": "expires_at"},
        )
    if expires_at <= now:
        raise InvalidParameter("expires_at is in the past", extra={"field": "expires_at"})
    if expires_at > now + MAX_KEY_LIFETIME:
        raise InvalidParameter(
            f"a key lives at most {MAX_KEY_LIFETIME.days} days", extra={"field": "expires_at"}
        )
    return expires_at


async def create_api_key(
    session: AsyncSession,
    tenant: Tenant,
    name: str | None,
    *,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
    granted_by: frozenset[str] | None = None,
) -> CreatedKey:
    """A new key for the tenant: the full key is in the answer, once; only its prefix and a
    hash of its secret are stored. `scopes` default to `DEFAULT_SCOPES`; when a key creates
    the key (`granted_by`: its scopes), it cannot grant a scope it does not hold (403
    `insufficient_scope`). `expires_at` comes from `key_expiry`."""
    wanted = list(DEFAULT_SCOPES) if scopes is None else scopes
    _check_scopes(wanted, granted_by)
    new_key = generate_key()
    api_key = ApiKey(
        tenant_id=tenant.id,
        prefix=new_key.prefix,
        secret_hash=new_key.secret_hash,
        name=name,
        scopes=normalized(wanted),
        expires_at=expires_at,
    )
    await repository.insert_api_key(session, api_key)
    # With every column the database filled in (its creation time).
    await repository.refresh(session, api_key)
    return CreatedKey(key=new_key.key, api_key=api_key)


def _check_scopes(
    wanted: list[str], granted_by: frozenset[str] | None, held: frozenset[str] = frozenset()
) -> None:
    """422 naming what is wrong with `wanted` as a key's scopes; 403 `insufficient_scope` when
    a key (`granted_by`: its scopes) would grant one it does not hold itself (keeping a scope
    the edited key `held` already grants nothing)."""
    problem = scope_problem(wanted)
    if problem is not None:
        raise InvalidParameter(problem, extra={"field": "scopes"})
    if granted_by is not None:
        beyond = [s for s in normalized(wanted) if s not in granted_by and s not in held]
        if beyond:
            raise InsufficientScope(
                f"this API key cannot grant scopes it does not hold: {', '.join(beyond)}",
                extra={"required_scope": beyond[0]},
            )


async def find_api_key(session: AsyncSession, key_ref: str) -> ApiKey:
    """A key by its id, given whole, or by its prefix; 404 `key_not_found` for none."""
    try:
        key_id = uuid.UUID(key_ref)
    except ValueError:
        parsed = parse_key(key_ref)
        prefix = parsed[0] if parsed else key_ref
        found = await repository.get_api_key(session, prefix)
    else:
        found = await repository.get_api_key_by_id(session, key_id)
    if found is None:
        raise KeyNotFound(f"no API key {key_ref!r}")
    return found


async def revoke_api_key(session: AsyncSession, key_or_prefix: str) -> ApiKey:
    """Revoke a key given by id, whole or by its prefix (repeating it is harmless); every api
    process forgets it at once. 404 `key_not_found` for an unknown one."""
    return await _revoke(session, await find_api_key(session, key_or_prefix))


async def revoke_tenant_key(session: AsyncSession, tenant: Tenant, key_id: uuid.UUID) -> ApiKey:
    """Revoke one of the tenant's own keys by id (the key revoking itself too); 404
    `key_not_found` for an id of no key of this tenant's, another tenant's included."""
    api_key = await repository.get_tenant_api_key(session, tenant.id, key_id)
    if api_key is None:
        raise KeyNotFound(f"no API key {key_id}")
    return await _revoke(session, api_key)


async def update_api_key(session: AsyncSession, key_ref: str, changes: KeyUpdate) -> ApiKey:
    """The admin's edit of any key (by id, whole or by prefix; `find_api_key`): any scope may
    be granted. Otherwise as `update_tenant_key`."""
    return await _update(session, await find_api_key(session, key_ref), changes, None)


async def update_tenant_key(
    session: AsyncSession,
    tenant: Tenant,
    key_id: uuid.UUID,
    changes: KeyUpdate,
    *,
    granted_by: frozenset[str],
) -> ApiKey:
    """Change the label, scopes or expiry of one of the tenant's own keys (the fields given in
    `changes`, at least one: 422 otherwise), validated as at creation; every api process
    forgets the key's cached grant at once. The editing key (`granted_by`: its scopes) may
    narrow any key, itself included, but not add a scope it does not hold, nor lengthen the
    life of a key holding such a scope (403 `insufficient_scope`). 404 `key_not_found` for
    another tenant's key; 409 `key_revoked` for a revoked one."""
    api_key = await repository.get_tenant_api_key(session, tenant.id, key_id)
    if api_key is None:
        raise KeyNotFound(f"no API key {key_id}")
    return await _update(session, api_key, changes, granted_by)


async def _update(
    session: AsyncSession, api_key: ApiKey, changes: KeyUpdate, granted_by: frozenset[str] | None
) -> ApiKey:
    given = changes.model_fields_set
    if not given:
        raise InvalidParameter(
            "give at least one of label, scopes, expires_at, expires_in", extra={"field": "body"}
        )
    if api_key.revoked_at is not None:
        raise Conflict(f"API key {api_key.id} is revoked", code="key_revoked")
    scopes = list(api_key.scopes)
    if "scopes" in given:
        scopes = changes.scopes or []
        _check_scopes(scopes, granted_by, held=frozenset(api_key.scopes))
    expires_at = api_key.expires_at
    if "expires_at" in given and "expires_in" in given:
        raise InvalidParameter(
            "give expires_at or expires_in, not both", extra={"field": "expires_in"}
        )
    if given & {"expires_at", "expires_in"}:
        expires_at = key_expiry(changes.expires_at, changes.expires_in, datetime.now(UTC))
        if granted_by is not None and _later(expires_at, api_key.expires_at):
            _check_outlives(scopes, granted_by)
    if "label" in given:
        api_key.name = changes.label
    api_key.scopes = normalized(scopes)
    api_key.expires_at = expires_at
    await repository.flush(session)
    await announce_change(session, api_key.tenant_id)
    return api_key


def _later(new: datetime | None, old: datetime | None) -> bool:
    """Whether expiring at `new` (None: never) gives a key a longer life than `old`."""
    return old is not None and (new is None or new > old)


def _check_outlives(scopes: list[str], granted_by: frozenset[str]) -> None:
    """403 `insufficient_scope` when a longer life would keep alive a scope the editing key
    does not hold (it could not have granted that key in the first place)."""
    beyond = [scope for scope in normalized(scopes) if scope not in granted_by]
    if beyond:
        raise InsufficientScope(
            "this API key cannot lengthen the life of a key holding scopes it does not hold: "
            + ", ".join(beyond),
            extra={"required_scope": beyond[0]},
        )


async def _revoke(session: AsyncSession, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = datetime.now(UTC)
        await repository.flush(session)
        await announce_change(session, api_key.tenant_id)
    return api_key


@dataclass(frozen=True)
class AuthenticatedKey:
    """The tenant a key belongs to (loaded in the caller's session) and what the key grants."""

    tenant: Tenant
    grant: KeyGrant


async def authenticate_key(session: AsyncSession, raw_key: str | None) -> AuthenticatedKey:
    """The tenant and grant of a presented API key; 401 for a missing, malformed, unknown,
    revoked or expired key (`key_expired` for the last). Scopes are the caller's to check."""
    if not raw_key:
        raise Unauthorized("missing API key: send it in the x-api-key header")
    parsed = parse_key(raw_key)
    if parsed is None:
        raise Unauthorized("invalid API key")
    prefix, secret = parsed
    row = await repository.key_with_tenant(session, prefix)
    if row is None or not secret_matches(secret, row.ApiKey.secret_hash):
        raise Unauthorized("invalid API key")
    api_key: ApiKey = row.ApiKey
    tenant: Tenant = row.Tenant
    if api_key.revoked_at is not None:
        raise Unauthorized("this API key has been revoked")
    now = datetime.now(UTC)
    check_not_expired(api_key.expires_at, now)
    # Record use at minute resolution, so a busy key does not write on every request.
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        await repository.set_key_last_used(session, api_key.id, now)
    grant = KeyGrant(
        key_id=api_key.id,
        prefix=api_key.prefix,
        scopes=frozenset(api_key.scopes),
        expires_at=api_key.expires_at,
        tenant=TenantSnapshot.of(tenant, api_key_id=api_key.id),
    )
    return AuthenticatedKey(tenant=tenant, grant=grant)


async def authenticate(session: AsyncSession, raw_key: str | None) -> Tenant:
    """The tenant a presented API key belongs to; Unauthorized for anything else."""
    return (await authenticate_key(session, raw_key)).tenant


async def authenticate_grant(session: AsyncSession, raw_key: str | None) -> KeyGrant:
    """`authenticate_key`'s grant, detached from the session (what the auth cache keeps)."""
    return (await authenticate_key(session, raw_key)).grant
