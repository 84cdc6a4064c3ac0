"""Every query on `tenant` and `api_key`, and the notification that a tenant changed."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Row, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from relight.core.models import ApiKey, Tenant
from relight.tenants.auth_cache import CHANGED_CHANNEL

# The advisory lock tenant creations take turns under (any constant unique to this purpose).
TENANT_NAMES_LOCK = 0x72656C74  # "relt"


async def notify_changed(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """`NOTIFY` the tenant's id on the channel every api process listens on; Postgres sends it
    when (and only if) the transaction commits."""
    await session.execute(select(func.pg_notify(CHANGED_CHANNEL, str(tenant_id))))


async def insert_tenant(session: AsyncSession, tenant: Tenant) -> bool:
    """Insert `tenant`; False (and nothing written, the transaction still usable) when its
    name is taken."""
    session.add(tenant)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        return False
    return True


async def lock_tenant_names(session: AsyncSession) -> None:
    """Take the transaction-scoped advisory lock under which tenant names are created, so
    two names checked against each other cannot be inserted at once."""
    await session.execute(select(func.pg_advisory_xact_lock(TENANT_NAMES_LOCK)))


async def tenant_names(session: AsyncSession) -> list[str]:
    return list(await session.scalars(select(Tenant.name)))


async def refresh(session: AsyncSession, row: Tenant | ApiKey) -> None:
    """Read the row again: the columns the database filled in or changed since."""
    await session.refresh(row)


async def get_by_id(session: AsyncSession, tenant_id: uuid.UUID) -> Tenant | None:
    found: Tenant | None = await session.scalar(select(Tenant).where(Tenant.id == tenant_id))
    return found


async def get_by_name(session: AsyncSession, name: str) -> Tenant | None:
    found: Tenant | None = await session.scalar(select(Tenant).where(Tenant.name == name))
    return found


async def list_tenants(session: AsyncSession) -> list[Tenant]:
    """Every tenant, oldest first."""
    return list((await session.scalars(select(Tenant).order_by(Tenant.created_at))).all())


async def flush(session: AsyncSession) -> None:
    """Write the changes made to loaded tenants and keys."""
    await session.flush()


async def list_api_keys(session: AsyncSession, tenant_id: uuid.UUID) -> list[ApiKey]:
    """The tenant's keys (revoked ones too), oldest first."""
    result = await session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
    )
    return list(result.all())


async def insert_api_key(session: AsyncSession, api_key: ApiKey) -> None:
    session.add(api_key)
    await session.flush()


async def get_api_key(session: AsyncSession, prefix: str) -> ApiKey | None:
    found: ApiKey | None = await session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    return found


async def get_api_key_by_id(session: AsyncSession, key_id: uuid.UUID) -> ApiKey | None:
    found: ApiKey | None = await session.scalar(select(ApiKey).where(ApiKey.id == key_id))
    return found


async def get_tenant_api_key(
    session: AsyncSession, tenant_id: uuid.UUID, key_id: uuid.UUID
) -> ApiKey | None:
    """The tenant's key with this id; None for another tenant's."""
    found: ApiKey | None = await session.scalar(
        select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id)
    )
    return found


async def key_with_tenant(session: AsyncSession, prefix: str) -> Row[ApiKey, Tenant] | None:
    """The key with this prefix and its tenant (`.ApiKey`, `.Tenant`), if any."""
    return (
        await session.execute(
            select(ApiKey, Tenant)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.prefix == prefix)
        )
    ).one_or_none()


async def set_key_last_used(session: AsyncSession, key_id: uuid.UUID, when: datetime) -> None:
    await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when))
