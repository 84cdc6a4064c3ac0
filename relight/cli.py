"""`relight-admin`: manage tenants and API keys. Every command prints JSON (`usage --csv`: CSV).

A refused command (or an unavailable database) exits 1 with one line of JSON on stderr. A usage
error exits 2 before anything reaches the database: typer's own checks in typer's words,
`usage`'s dates and `--group-by` as one such JSON line naming the option."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn, TypeVar

import orjson
import typer
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

# Typer carries its own click; the current command's parsed parameters are only reachable
# through its context.
from typer._click.globals import get_current_context

from relight.core.config import get_settings
from relight.core.db import create_engine, create_sessionmaker
from relight.core.errors import RelightError
from relight.core.models import ApiKey, CreditKind, Tenant, TenantStatus
from relight.core.redis_url import open_redis
from relight.core.text import unstorable_character
from relight.core.unit_of_work import unit_of_work
from relight.credits import service as credits
from relight.credits.schemas import CreditEntryView
from relight.tenants import service
from relight.tenants.schemas import (
    WEIGHT_DESCRIPTION,
    WEIGHT_MAX,
    WEIGHT_MIN,
    KeyUpdate,
    LimitsUpdate,
    TenantView,
)
from relight.tenants.scopes import SCOPES_DESCRIPTION, parse_duration
from relight.usage.schemas import GroupBy, UsageReport
from relight.usage.service import MAX_WINDOW_DAYS, usage_csv, usage_report, usage_window

app = typer.Typer(
    help="Manage Relight tenants and API keys.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
tenant_app = typer.Typer(help="Tenants (accounts).", no_args_is_help=True)
key_app = typer.Typer(help="API keys.", no_args_is_help=True)
credits_app = typer.Typer(help="Credits and the ledger.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")
app.add_typer(credits_app, name="credits")

T = TypeVar("T")


def _emit(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _check_storable_arguments() -> None:
    """The one text rule (`relight.core.text`) for every argument and option of the command being
    run: bytes that are not UTF-8 (which Python hands over as lone surrogates) or a NUL are a
    validation error naming the option, before anything reaches the database."""
    context = get_current_context(silent=True)
    if context is None:
        return
    for parameter in context.command.params:
        value = context.params.get(parameter.name or "")
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            problem = unstorable_character(item) if isinstance(item, str) else None
            if problem is not None:
                flag = parameter.opts[0] if parameter.opts else ""
                shown = flag if flag.startswith("-") else parameter.name
                _fail(f"{shown}: {problem}", "validation_error")


def _run(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one committed transaction; a RelightError becomes a clean exit 1."""
    _check_storable_arguments()

    async def runner() -> T:
        engine = create_engine(get_settings(), pool_size=1)
        try:
            async with unit_of_work(create_sessionmaker(engine)) as uow:
                return await work(uow.session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(runner())
    except RelightError as exc:
        _fail(exc.message, exc.code)
    except (OperationalError, InterfaceError, OSError) as exc:
        _fail(f"database unavailable: {exc.__class__.__name__}: {exc}", "database_unavailable")
    except SQLAlchemyError as exc:
        _fail(f"database error: {exc.__class__.__name__}: {exc}", "database_error")


def _fail(message: str, code: str, exit_code: int = 1) -> NoReturn:
    """One line of JSON on stderr, and exit 1 (refused), or 2 for a usage error."""
    sys.stderr.write(orjson.dumps({"error": message, "code": code}).decode() + "\n")
    raise typer.Exit(exit_code)


def _tenant_json(tenant: Tenant) -> dict[str, Any]:
    return TenantView.of(tenant).model_dump(mode="json")


def _key_json(api_key: ApiKey, tenant_name: str | None = None) -> dict[str, Any]:
    return {
        "id": str(api_key.id),
        "prefix": api_key.prefix,
        "tenant_id": str(api_key.tenant_id),
        "tenant": tenant_name,
        "name": api_key.name,
        "label": api_key.name,
        "scopes": list(api_key.scopes),
        "created_at": api_key.created_at.isoformat(),
        "expires_at": api_key.expires_at.isoformat() if api_key.expires_at else None,
        "revoked_at": api_key.revoked_at.isoformat() if api_key.revoked_at else None,
    }


def _mirror_weight(tenant: dict[str, Any]) -> None:
    """Tell the workers a committed weight (the admin API does the same after its commit)."""
    settings = get_settings()

    async def mirror() -> None:
        redis = open_redis(settings.redis_url, socket_connect_timeout=5)
        try:
            tenant_id = uuid.UUID(tenant["id"])
            await service.mirror_weight(redis, settings.queue_name, tenant_id, tenant["weight"])
        finally:
            await redis.aclose()

    asyncio.run(mirror())


WeightOption = Annotated[int, typer.Option(min=WEIGHT_MIN, max=WEIGHT_MAX, help=WEIGHT_DESCRIPTION)]


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="unique tenant name")],
    credits: Annotated[int, typer.Option(min=0, help="starting credit balance")] = 0,
    weight: WeightOption = 1,
) -> None:
    """Create a tenant."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        tenant = await service.create_tenant(session, name, credits, weight=weight)
        return _tenant_json(tenant)

    created = _run(work)
    _mirror_weight(created)
    _emit(created)


@tenant_app.command("set-weight")
def tenant_set_weight(
    tenant: Annotated[str, typer.Argument(help="tenant name or id")],
    weight: Annotated[int, typer.Argument(min=WEIGHT_MIN, max=WEIGHT_MAX, help=WEIGHT_DESCRIPTION)],
) -> None:
    """Set how many jobs a tenant starts per turn of fair dispatch (1: an equal share)."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        owner = await service.find_tenant(session, tenant)
        return _tenant_json(await service.set_weight(session, owner, weight))

    updated = _run(work)
    _mirror_weight(updated)
    _emit(updated)


@tenant_app.command("set-limits")
def tenant_set_limits(
    tenant: Annotated[str, typer.Argument(help="tenant name or id")],
    requests_per_minute: Annotated[int | None, typer.Option(min=1, help="sustained rate")] = None,
    burst: Annotated[int | None, typer.Option(min=1, help="requests at once")] = None,
    max_in_flight: Annotated[
        int | None, typer.Option(min=1, help="queued + running requests at most")
    ] = None,
) -> None:
    """Change a tenant's rate limit, burst or in-flight cap."""
    limits = LimitsUpdate(
        requests_per_minute=requests_per_minute, burst=burst, max_in_flight=max_in_flight
    )

    async def work(session: AsyncSession) -> dict[str, Any]:
        owner = await service.find_tenant(session, tenant)
        return _tenant_json(await service.set_limits(session, owner, limits))

    _emit(_run(work))


def _set_status(tenant: str, status: TenantStatus) -> None:
    async def work(session: AsyncSession) -> dict[str, Any]:
        owner = await service.find_tenant(session, tenant)
        return _tenant_json(await service.set_tenant_status(session, owner, status))

    _emit(_run(work))


@tenant_app.command("suspend")
def tenant_suspend(tenant: Annotated[str, typer.Argument(help="tenant name or id")]) -> None:
    """Suspend a tenant: its submits answer 403 until resumed."""
    _set_status(tenant, TenantStatus.SUSPENDED)


@tenant_app.command("resume")
def tenant_resume(tenant: Annotated[str, typer.Argument(help="tenant name or id")]) -> None:
    """Resume a suspended tenant."""
    _set_status(tenant, TenantStatus.ACTIVE)


@tenant_app.command("set-backends")
def tenant_set_backends(
    tenant: Annotated[str, typer.Argument(help="tenant name or id")],
    backends: Annotated[str, typer.Argument(help="comma-separated: gpu,segmind,local")],
) -> None:
    """Set the backends a tenant's requests may run on."""
    names = [name.strip() for name in backends.split(",") if name.strip()]

    async def work(session: AsyncSession) -> dict[str, Any]:
        owner = await service.find_tenant(session, tenant)
        return _tenant_json(await service.set_allowed_backends(session, owner, names))

    _emit(_run(work))


@tenant_app.command("set-lanes")
def tenant_set_lanes(
    tenant: Annotated[str, typer.Argument(help="tenant name or id")],
    lanes: Annotated[str, typer.Argument(help="comma-separated: high,normal,low")],
) -> None:
    """Set the priority lanes a tenant's requests may use (new tenants: normal,low)."""
    names = [name.strip() for name in lanes.split(",") if name.strip()]

    async def work(session: AsyncSession) -> dict[str, Any]:
        owner = await service.find_tenant(session, tenant)
        return _tenant_json(await service.set_allowed_lanes(session, owner, names))

    _emit(_run(work))


@tenant_app.command("set-webhook")
def tenant_set_webhook(
    tenant: Annotated[str, typer.Argument(help="tenant name or id")],
    url: Annotated[str | None, typer.Argument(help="default webhook URL")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove the default URL")] = False,
) -> None:
    """Set (or --clear) where webhooks go when a request names no webhook_url."""
    if (url is None) == (not clear):
        _fail("give a URL, or --clear", "validation_error")

    async def work(session: AsyncSession) -> dict[str, Any]:
        owner = await service.find_tenant(session, tenant)
        policy = get_settings().egress_policy
        return _tenant_json(await service.set_default_webhook(session, owner, url, policy))

    _emit(_run(work))


@tenant_app.command("list")
def tenant_list() -> None:
    """List tenants."""

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [_tenant_json(tenant) for tenant in await service.list_tenants(session)]

    _emit(_run(work))


def _scope_list(scopes: str | None) -> list[str] | None:
    """`--scopes a,b` as a list (None when not given)."""
    if scopes is None:
        return None
    return [scope.strip() for scope in scopes.split(",") if scope.strip()]


def _lifetime_s(expires: str | None) -> int | None:
    """`--expires 30d` in seconds (None when not given); a bad duration fails the command."""
    if expires is None:
        return None
    try:
        return int(parse_duration(expires).total_seconds())
    except ValueError as exc:
        _fail(str(exc), "validation_error")


@key_app.command("create")
def key_create(
    tenant: Annotated[str, typer.Argument(help="tenant name or id")],
    label: Annotated[str | None, typer.Option(help="what the key is for")] = None,
    name: Annotated[str | None, typer.Option(help="the label, by its old name")] = None,
    scopes: Annotated[
        str | None, typer.Option(help=f"comma-separated; {SCOPES_DESCRIPTION}")
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="the key stops working after this long: 30d, 12h, 90m")
    ] = None,
) -> None:
    """Create an API key; the key itself is printed once and never stored."""
    wanted = _scope_list(scopes) or None
    lifetime_s = _lifetime_s(expires)

    async def work(session: AsyncSession) -> dict[str, Any]:
        owner = await service.find_tenant(session, tenant)
        expires_at = service.key_expiry(None, lifetime_s, datetime.now(UTC))
        created = await service.create_api_key(
            session, owner, label or name, scopes=wanted, expires_at=expires_at
        )
        return {"key": created.key, **_key_json(created.api_key, owner.name)}

    _emit(_run(work))


@key_app.command("update")
def key_update(
    key: Annotated[str, typer.Argument(help="the key's id, the key, or its public prefix")],
    label: Annotated[str | None, typer.Option(help="what the key is for")] = None,
    scopes: Annotated[
        str | None,
        typer.Option(help="comma-separated, replacing the key's scopes; any of the scopes"),
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="the key stops working this long from now: 30d, 12h")
    ] = None,
    no_expiry: Annotated[
        bool, typer.Option("--no-expiry", help="the key never expires (removes its expiry)")
    ] = False,
    no_label: Annotated[
        bool, typer.Option("--no-label", help="the key has no label (removes its label)")
    ] = False,
) -> None:
    """Change a key's label, scopes or expiry (only the options given); every api process
    obeys at once."""
    if expires is not None and no_expiry:
        _fail("give --expires or --no-expiry, not both", "validation_error")
    if label is not None and no_label:
        _fail("give --label or --no-label, not both", "validation_error")
    _check_storable_arguments()
    given = {"label": label, "scopes": _scope_list(scopes), "expires_in": _lifetime_s(expires)}
    fields: dict[str, Any] = {field: value for field, value in given.items() if value is not None}
    if no_expiry:
        fields["expires_at"] = None
    if no_label:
        fields["label"] = None
    try:
        changes = KeyUpdate(**fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        option = {"expires_in": "expires"}.get(str(error["loc"][0]), str(error["loc"][0]))
        _fail(f"--{option}: {error['msg']}", "validation_error")

    async def work(session: AsyncSession) -> dict[str, Any]:
        return _key_json(await service.update_api_key(session, key, changes))

    _emit(_run(work))


@key_app.command("revoke")
def key_revoke(
    key: Annotated[str, typer.Argument(help="the key, or its public prefix")],
) -> None:
    """Revoke an API key at once."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        return _key_json(await service.revoke_api_key(session, key))

    _emit(_run(work))


def _move_credits(tenant: str, amount: int, reason: str, kind: CreditKind) -> None:
    async def work(session: AsyncSession) -> dict[str, Any]:
        owner = await service.find_tenant(session, tenant)
        entry = await credits.grant_credits(session, owner.id, amount, reason=reason, kind=kind)
        return CreditEntryView.of(entry).model_dump(mode="json")

    _emit(_run(work))


@credits_app.command("grant")
def credits_grant(
    tenant: Annotated[str, typer.Argument(help="tenant name or id")],
    amount: Annotated[int, typer.Argument(min=1, help="credits to add")],
    reason: Annotated[str, typer.Option(help="why (recorded in the ledger)")],
) -> None:
    """Add credits to a tenant."""
    _move_credits(tenant, amount, reason, CreditKind.GRANT)


@credits_app.command("adjust")
def credits_adjust(
    tenant: Annotated[str, typer.Argument(help="tenant name or id")],
    amount: Annotated[int, typer.Argument(help="credits to add, negative to remove")],
    reason: Annotated[str, typer.Option(help="why (recorded in the ledger)")],
) -> None:
    """Correct a tenant's balance (either sign; never below zero)."""
    _move_credits(tenant, amount, reason, CreditKind.ADJUST)


@credits_app.command("show")
def credits_show(
    tenant: Annotated[str, typer.Argument(help="tenant name or id")],
    last: Annotated[int, typer.Option(min=1, max=1000, help="entries to show")] = 20,
) -> None:
    """A tenant's balance and its last ledger entries, newest first."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        owner = await service.find_tenant(session, tenant)
        entries = await credits.list_entries(session, owner.id, limit=last)
        return {
            "tenant": owner.name,
            "balance": owner.credit_balance,
            "entries": [CreditEntryView.of(entry).model_dump(mode="json") for entry in entries],
        }

    _emit(_run(work))


@credits_app.command("audit")
def credits_audit() -> None:
    """Check every tenant's balance against the sum of its ledger; exit 1 on any difference."""

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [
            {
                "tenant_id": str(found.tenant_id),
                "tenant": found.tenant_name,
                "balance": found.balance,
                "ledger_sum": found.ledger_sum,
            }
            for found in await credits.audit_ledger(session)
        ]

    discrepancies = _run(work)
    _emit({"ok": not discrepancies, "discrepancies": discrepancies})
    if discrepancies:
        raise typer.Exit(1)


@app.command("usage")
def usage(
    tenant: Annotated[str, typer.Argument(help="tenant name or id")],
    start: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="window start: ISO date or datetime; default 30 days ago (a window is at most "
            f"{MAX_WINDOW_DAYS} days)",
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(
            "--to", help="window end: ISO date (its day included) or datetime; default now"
        ),
    ] = None,
    group_by: Annotated[str, typer.Option(help="one entry per UTC day, backend or key")] = "day",
    as_csv: Annotated[bool, typer.Option("--csv", help="the periods as CSV, a header first")] = (
        False
    ),
) -> None:
    """A tenant's usage by UTC day, backend or API key: what GET
    /admin/v1/tenants/{tenant}/usage answers (with --csv, its usage.csv)."""
    try:
        grouping = GroupBy(group_by)
    except ValueError:
        choices = ", ".join(choice.value for choice in GroupBy)
        _fail(f"--group-by: {group_by!r} is not one of {choices}", "validation_error", 2)
    try:
        window = usage_window(start, end)
    except RelightError as exc:
        # `field` and the problem, as the API's 422 names them; here the option's name.
        detail = exc.extra["details"][0]
        _fail(f"--{detail['field']}: {detail['message']}", exc.code, 2)

    async def work(session: AsyncSession) -> UsageReport:
        owner = await service.find_tenant(session, tenant)
        return await usage_report(session, owner.id, *window, grouping)

    report = _run(work)
    if as_csv:
        sys.stdout.write(usage_csv(report))
    else:
        _emit(report.model_dump(mode="json", by_alias=True))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
