"""The platform's admin API (`/admin/v1`, bearer admin token): tenants, keys, credits, ledger.

`Admin` blocks, `AsyncAdmin` awaits; both run the operations of `AdminOperations` (one core).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import date, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx

from relight_client._core import (
    Call,
    Emit,
    Operation,
    RetryPolicy,
    iterate_async,
    iterate_sync,
    json_of,
    run_async,
    run_sync,
    send,
)
from relight_client._operations import key_changes, key_options, usage_params
from relight_client.models import ApiKey, CreatedApiKey, LedgerEntry, Tenant, UsageReport

T = TypeVar("T")
PREFIX = "/admin/v1"


class AdminOperations:
    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def _call(self, method: str, path: str, **fields: Any) -> Operation[Any]:
        # Writes are not resent after a dropped connection: a grant sent twice pays twice.
        call = Call(method, PREFIX + path, idempotent=method == "GET", **fields)
        response = yield from send(call, self.policy)
        return json_of(response)

    def _tenant(self, method: str, path: str, **fields: Any) -> Operation[Tenant]:
        return Tenant.model_validate((yield from self._call(method, path, **fields)))

    def create_tenant(
        self, name: str, credits: int, limits: dict[str, int] | None
    ) -> Operation[Tenant]:
        body: dict[str, Any] = {"name": name, "credits": credits}
        if limits:
            body["limits"] = limits
        return (yield from self._tenant("POST", "/tenants", json=body))

    def list_tenants(self) -> Operation[list[Tenant]]:
        items = yield from self._call("GET", "/tenants")
        return [Tenant.model_validate(item) for item in items]

    def get_tenant(self, tenant: str) -> Operation[Tenant]:
        return (yield from self._tenant("GET", f"/tenants/{tenant}"))

    def suspend(self, tenant: str) -> Operation[Tenant]:
        return (yield from self._tenant("POST", f"/tenants/{tenant}/suspend"))

    def resume(self, tenant: str) -> Operation[Tenant]:
        return (yield from self._tenant("POST", f"/tenants/{tenant}/resume"))

    def set_limits(self, tenant: str, limits: dict[str, int]) -> Operation[Tenant]:
        return (yield from self._tenant("PATCH", f"/tenants/{tenant}/limits", json=limits))

    def set_backends(self, tenant: str, backends: list[str]) -> Operation[Tenant]:
        body = {"backends": backends}
        return (yield from self._tenant("PUT", f"/tenants/{tenant}/backends", json=body))

    def set_webhook(self, tenant: str, url: str | None) -> Operation[Tenant]:
        return (yield from self._tenant("PUT", f"/tenants/{tenant}/webhook", json={"url": url}))

    def set_lanes(self, tenant: str, lanes: list[str]) -> Operation[Tenant]:
        body = {"lanes": lanes}
        return (yield from self._tenant("PUT", f"/tenants/{tenant}/lanes", json=body))

    def set_weight(self, tenant: str, weight: int) -> Operation[Tenant]:
        body = {"weight": weight}
        return (yield from self._tenant("PUT", f"/tenants/{tenant}/weight", json=body))

    def create_key(
        self, tenant: str, name: str | None, options: dict[str, Any]
    ) -> Operation[CreatedApiKey]:
        body = {"name": name, **options}
        data = yield from self._call("POST", f"/tenants/{tenant}/keys", json=body)
        return CreatedApiKey.model_validate(data)

    def list_keys(self, tenant: str) -> Operation[list[ApiKey]]:
        items = yield from self._call("GET", f"/tenants/{tenant}/keys")
        return [ApiKey.model_validate(item) for item in items]

    def update_key(self, key: str, changes: dict[str, Any]) -> Operation[ApiKey]:
        return ApiKey.model_validate((yield from self._call("PATCH", f"/keys/{key}", json=changes)))

    def revoke_key(self, prefix: str) -> Operation[ApiKey]:
        return ApiKey.model_validate((yield from self._call("POST", f"/keys/{prefix}/revoke")))

    def move_credits(
        self, tenant: str, amount: int, reason: str, kind: str
    ) -> Operation[LedgerEntry]:
        body = {"amount": amount, "reason": reason, "kind": kind}
        data = yield from self._call("POST", f"/tenants/{tenant}/credits", json=body)
        return LedgerEntry.model_validate(data)

    def usage(self, tenant: str, params: dict[str, str]) -> Operation[UsageReport]:
        data = yield from self._call("GET", f"/tenants/{tenant}/usage", params=params)
        return UsageReport.model_validate(data)

    def ledger(self, tenant: str, page_size: int) -> Operation[None]:
        """Emit every ledger entry, newest first, page by page."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor is not None:
                params["cursor"] = cursor
            page = yield from self._call("GET", f"/tenants/{tenant}/ledger", params=params)
            for item in page["data"]:
                yield Emit(LedgerEntry.model_validate(item))
            cursor = page.get("next_cursor")
            if not cursor:
                return


def _limits(
    requests_per_minute: int | None, burst: int | None, max_in_flight: int | None
) -> dict[str, int]:
    given = {
        "requests_per_minute": requests_per_minute,
        "burst": burst,
        "max_in_flight": max_in_flight,
    }
    return {name: value for name, value in given.items() if value is not None}


def _http_options(admin_token: str, timeout: float) -> dict[str, Any]:
    return {"headers": {"authorization": f"Bearer {admin_token}"}, "timeout": timeout}


class Admin:
    """`Admin(base_url, admin_token)`: `{tenant}` arguments take a tenant's name or id."""

    def __init__(
        self, base_url: str, admin_token: str, *, timeout: float = 30, max_retries: int = 3
    ) -> None:
        self._http = httpx.Client(base_url=base_url, **_http_options(admin_token, timeout))
        self._ops = AdminOperations(RetryPolicy(max_retries))

    def _run(self, operation: Operation[T]) -> T:
        return run_sync(self._http, operation)

    def create_tenant(
        self,
        name: str,
        *,
        credits: int = 0,
        requests_per_minute: int | None = None,
        burst: int | None = None,
        max_in_flight: int | None = None,
    ) -> Tenant:
        limits = _limits(requests_per_minute, burst, max_in_flight)
        return self._run(self._ops.create_tenant(name, credits, limits))

    def list_tenants(self) -> list[Tenant]:
        return self._run(self._ops.list_tenants())

    def get_tenant(self, tenant: str) -> Tenant:
        return self._run(self._ops.get_tenant(tenant))

    def suspend(self, tenant: str) -> Tenant:
        return self._run(self._ops.suspend(tenant))

    def resume(self, tenant: str) -> Tenant:
        return self._run(self._ops.resume(tenant))

    def set_limits(
        self,
        tenant: str,
        *,
        requests_per_minute: int | None = None,
        burst: int | None = None,
        max_in_flight: int | None = None,
    ) -> Tenant:
        limits = _limits(requests_per_minute, burst, max_in_flight)
        return self._run(self._ops.set_limits(tenant, limits))

    def set_backends(self, tenant: str, backends: list[str]) -> Tenant:
        return self._run(self._ops.set_backends(tenant, backends))

    def set_webhook(self, tenant: str, url: str | None) -> Tenant:
        return self._run(self._ops.set_webhook(tenant, url))

    def set_lanes(self, tenant: str, lanes: list[str]) -> Tenant:
        """The priority lanes the tenant's requests may use (`high`, `normal`, `low`)."""
        return self._run(self._ops.set_lanes(tenant, lanes))

    def set_weight(self, tenant: str, weight: int) -> Tenant:
        """Jobs the tenant starts per turn of fair dispatch (1 to 100)."""
        return self._run(self._ops.set_weight(tenant, weight))

    def create_key(
        self,
        tenant: str,
        name: str | None = None,
        *,
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
        expires_in: timedelta | int | None = None,
    ) -> CreatedApiKey:
        """A new key for the tenant, labelled `name`; scopes default to all but keys:manage."""
        options = key_options(None, scopes, expires_at, expires_in)
        return self._run(self._ops.create_key(tenant, name, options))

    def list_keys(self, tenant: str) -> list[ApiKey]:
        return self._run(self._ops.list_keys(tenant))

    def update_key(
        self,
        key: str,
        *,
        name: str | None = None,
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
        expires_in: timedelta | int | None = None,
        never_expires: bool = False,
        clear_label: bool = False,
    ) -> ApiKey:
        """Change a key's label (`name`), scopes (any) or expiry (`never_expires` removes it;
        `clear_label` removes the label), the key given by id or public prefix; only what is given
        changes."""
        changes = key_changes(name, scopes, expires_at, expires_in, never_expires, clear_label)
        return self._run(self._ops.update_key(key, changes))

    def revoke_key(self, prefix: str) -> ApiKey:
        return self._run(self._ops.revoke_key(prefix))

    def grant_credits(
        self, tenant: str, amount: int, reason: str, *, kind: Literal["grant", "adjust"] = "grant"
    ) -> LedgerEntry:
        return self._run(self._ops.move_credits(tenant, amount, reason, kind))

    def usage(
        self,
        tenant: str,
        from_: date | datetime | str | None = None,
        to: date | datetime | str | None = None,
        *,
        group_by: str = "day",
    ) -> UsageReport:
        """The tenant's usage, as `Relight.usage` answers it to the tenant."""
        return self._run(self._ops.usage(tenant, usage_params(from_, to, group_by)))

    def ledger(self, tenant: str, *, page_size: int = 50) -> Iterator[LedgerEntry]:
        """Every entry of the tenant's ledger, newest first."""
        return iterate_sync(self._http, self._ops.ledger(tenant, page_size))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncAdmin:
    """`Admin` for asyncio."""

    def __init__(
        self, base_url: str, admin_token: str, *, timeout: float = 30, max_retries: int = 3
    ) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, **_http_options(admin_token, timeout))
        self._ops = AdminOperations(RetryPolicy(max_retries))

    async def _run(self, operation: Operation[T]) -> T:
        return await run_async(self._http, operation)

    async def create_tenant(
        self,
        name: str,
        *,
        credits: int = 0,
        requests_per_minute: int | None = None,
        burst: int | None = None,
        max_in_flight: int | None = None,
    ) -> Tenant:
        limits = _limits(requests_per_minute, burst, max_in_flight)
        return await self._run(self._ops.create_tenant(name, credits, limits))

    async def list_tenants(self) -> list[Tenant]:
        return await self._run(self._ops.list_tenants())

    async def get_tenant(self, tenant: str) -> Tenant:
        return await self._run(self._ops.get_tenant(tenant))

    async def suspend(self, tenant: str) -> Tenant:
        return await self._run(self._ops.suspend(tenant))

    async def resume(self, tenant: str) -> Tenant:
        return await self._run(self._ops.resume(tenant))

    async def set_limits(
        self,
        tenant: str,
        *,
        requests_per_minute: int | None = None,
        burst: int | None = None,
        max_in_flight: int | None = None,
    ) -> Tenant:
        limits = _limits(requests_per_minute, burst, max_in_flight)
        return await self._run(self._ops.set_limits(tenant, limits))

    async def set_backends(self, tenant: str, backends: list[str]) -> Tenant:
        return await self._run(self._ops.set_backends(tenant, backends))

    async def set_webhook(self, tenant: str, url: str | None) -> Tenant:
        return await self._run(self._ops.set_webhook(tenant, url))

    async def set_lanes(self, tenant: str, lanes: list[str]) -> Tenant:
        """The priority lanes the tenant's requests may use (`high`, `normal`, `low`)."""
        return await self._run(self._ops.set_lanes(tenant, lanes))

    async def set_weight(self, tenant: str, weight: int) -> Tenant:
        """Jobs the tenant starts per turn of fair dispatch (1 to 100)."""
        return await self._run(self._ops.set_weight(tenant, weight))

    async def create_key(
        self,
        tenant: str,
        name: str | None = None,
        *,
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
        expires_in: timedelta | int | None = None,
    ) -> CreatedApiKey:
        """A new key for the tenant, labelled `name`; scopes default to all but keys:manage."""
        options = key_options(None, scopes, expires_at, expires_in)
        return await self._run(self._ops.create_key(tenant, name, options))

    async def list_keys(self, tenant: str) -> list[ApiKey]:
        return await self._run(self._ops.list_keys(tenant))

    async def update_key(
        self,
        key: str,
        *,
        name: str | None = None,
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
        expires_in: timedelta | int | None = None,
        never_expires: bool = False,
        clear_label: bool = False,
    ) -> ApiKey:
        """Change a key's label (`name`), scopes (any) or expiry (`never_expires` removes it;
        `clear_label` removes the label), the key given by id or public prefix; only what is given
        changes."""
        changes = key_changes(name, scopes, expires_at, expires_in, never_expires, clear_label)
        return await self._run(self._ops.update_key(key, changes))

    async def revoke_key(self, prefix: str) -> ApiKey:
        return await self._run(self._ops.revoke_key(prefix))

    async def grant_credits(
        self, tenant: str, amount: int, reason: str, *, kind: Literal["grant", "adjust"] = "grant"
    ) -> LedgerEntry:
        return await self._run(self._ops.move_credits(tenant, amount, reason, kind))

    async def usage(
        self,
        tenant: str,
        from_: date | datetime | str | None = None,
        to: date | datetime | str | None = None,
        *,
        group_by: str = "day",
    ) -> UsageReport:
        return await self._run(self._ops.usage(tenant, usage_params(from_, to, group_by)))

    def ledger(self, tenant: str, *, page_size: int = 50) -> AsyncIterator[LedgerEntry]:
        return iterate_async(self._http, self._ops.ledger(tenant, page_size))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
