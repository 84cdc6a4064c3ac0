"""`relight-admin`: manage tenants and API keys. Every command prints JSON."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NoReturn, TypeVar

import orjson
import typer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from relight.config import get_settings
from relight.db import create_engine, create_sessionmaker
from relight.errors import RelightError
from relight.models import ApiKey, Tenant
from relight.tenants import service

app = typer.Typer(
    help="Manage Relight tenants and API keys.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
tenant_app = typer.Typer(help="Tenants (accounts).", no_args_is_help=True)
key_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")

T = TypeVar("T")


def _emit(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _run(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one committed transaction; a RelightError becomes a clean exit 1."""

    async def runner() -> T:
        engine = create_engine(get_settings(), pool_size=1)
        try:
            async with create_sessionmaker(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(runner())
    except RelightError as exc:
        _fail(exc.message, exc.code)
    except (SQLAlchemyError, OSError) as exc:
        _fail(f"database unavailable: {exc.__class__.__name__}: {exc}", "database_unavailable")


def _fail(message: str, code: str) -> NoReturn:
    sys.stderr.write(orjson.dumps({"error": message, "code": code}).decode() + "\n")
    raise typer.Exit(1)


def _tenant_json(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": str(tenant.id),
        "name": tenant.name,
        "status": tenant.status,
        "credit_balance": tenant.credit_balance,
        "created_at": tenant.created_at.isoformat() if tenant.created_at else None,
    }


def _key_json(api_key: ApiKey, tenant_name: str | None = None) -> dict[str, Any]:
    return {
        "id": str(api_key.id),
        "prefix": api_key.prefix,
        "tenant_id": str(api_key.tenant_id),
        "tenant": tenant_name,
        "name": api_key.name,
        "revoked_at": api_key.revoked_at.isoformat() if api_key.revoked_at else None,
    }


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="unique tenant name")],
    credits: Annotated[int, typer.Option(min=0, help="starting credit balance")] = 0,
) -> None:
    """Create a tenant."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        tenant = await service.create_tenant(session, name, credits)
        await session.refresh(tenant)
        return _tenant_json(tenant)

    _emit(_run(work))


@tenant_app.command("list")
def tenant_list() -> None:
    """List tenants."""

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [_tenant_json(tenant) for tenant in await service.list_tenants(session)]

    _emit(_run(work))


@key_app.command("create")
def key_create(
    tenant: Annotated[str, typer.Argument(help="tenant name or id")],
    name: Annotated[str | None, typer.Option(help="a label for the key")] = None,
) -> None:
    """Create an API key; the key itself is printed once and never stored."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        owner = await service.find_tenant(session, tenant)
        created = await service.create_api_key(session, owner, name)
        return {"key": created.key, **_key_json(created.api_key, owner.name)}

    _emit(_run(work))


@key_app.command("revoke")
def key_revoke(
    key: Annotated[str, typer.Argument(help="the key, or its public prefix")],
) -> None:
    """Revoke an API key at once."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        return _key_json(await service.revoke_api_key(session, key))

    _emit(_run(work))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
