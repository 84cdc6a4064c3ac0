"""Every route that authenticates a tenant's API key declares exactly one scope, where the route
is declared (a scope dependency of `api/deps.py`), so that a new route cannot forget to. Read
from the application itself (its routes' dependency trees and its OpenAPI document) and from the
source: no module of `api/` but `api/deps.py` authenticates a key by itself, out of sight of
the dependency tree.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from api.app import create_app
from api.deps import (
    API_KEY_SECURITY,
    AccountReadScope,
    RequestsReadScope,
    SubmittingTenantDep,
    TenantDep,
    route_authenticates_a_key,
    route_scopes,
)
from relight.core.config import Settings
from relight.tenants.scopes import ALL_SCOPES
from tests.architecture.test_query_layer import sources
from tests.conftest import ROOT

KEY_SCHEMES = {"ApiKey", "Bearer"}
# What authenticates a key; only api/deps.py may call them (the routes depend on deps' ones).
AUTHENTICATORS = {"authenticate", "authenticate_key", "authenticate_grant", "submitting_tenant"}
DEPS = Path("api/deps.py")


def asks_for_a_key(operation: dict[str, Any] | None) -> bool:
    """Whether an OpenAPI operation lists an API key among its security requirements."""
    requirements = (operation or {}).get("security", [])
    return any(KEY_SCHEMES & set(requirement) for requirement in requirements)


def scope_problems(app: FastAPI) -> list[str]:
    """`METHOD path: what is wrong` for each route that authenticates a tenant's key without
    declaring exactly one scope, or declares a scope without authenticating a key."""
    paths = app.openapi()["paths"]
    problems = []
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute):
            continue
        scopes = route_scopes(route.dependant)
        for method in sorted(route.methods or ()):
            operation = paths.get(route.path_format, {}).get(method.lower())
            authenticates = route_authenticates_a_key(route.dependant) or asks_for_a_key(operation)
            where = f"{method} {route.path_format}"
            if authenticates and len(scopes) != 1:
                problems.append(f"{where}: takes an API key but declares {len(scopes)} scopes")
            if scopes and not authenticates:
                problems.append(f"{where}: declares a scope but takes no API key")
    return problems


def authentications_outside_deps(source: str, path: Path) -> list[str]:
    """`path:line: name()` for each call of a key authenticator in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in AUTHENTICATORS:
                found.append(f"{path}:{node.lineno}: {name}()")
    return found


def test_every_route_that_takes_an_api_key_declares_exactly_one_scope(
    settings: Settings,
) -> None:
    app = create_app(settings)

    assert scope_problems(app) == []
    declared = {
        scope.value
        for route in iter_route_contexts(app.routes)
        if isinstance(route.original_route, APIRoute)
        for scope in route_scopes(route.dependant)
    }
    assert declared == set(ALL_SCOPES)  # every scope guards something


def test_the_openapi_document_names_each_operations_scope(settings: Settings) -> None:
    paths = create_app(settings).openapi()["paths"]

    assert paths["/v2/ic-light"]["post"]["x-required-scope"] == "relight:submit"
    assert paths["/v2/requests/{request_id}/cancel"]["post"]["x-required-scope"] == (
        "requests:cancel"
    )
    assert paths["/v2/keys"]["post"]["x-required-scope"] == "keys:manage"
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert asks_for_a_key(operation) == ("x-required-scope" in operation), (method, path)


def test_a_route_without_a_scope_or_with_two_is_caught() -> None:
    router = APIRouter()

    @router.get("/forgot")
    async def forgot(tenant: TenantDep) -> None: ...

    @router.get("/two", dependencies=[RequestsReadScope, AccountReadScope])
    async def two(tenant: TenantDep) -> None: ...

    @router.post("/reads-its-own-headers", openapi_extra={"security": API_KEY_SECURITY})
    async def reads_its_own_headers() -> None: ...

    @router.get("/read", dependencies=[RequestsReadScope])
    async def fine_read(tenant: TenantDep) -> None: ...

    @router.post("/submit")
    async def fine_submit(tenant: SubmittingTenantDep) -> None: ...

    app = FastAPI()
    app.include_router(router)

    assert scope_problems(app) == [
        "GET /forgot: takes an API key but declares 0 scopes",
        "GET /two: takes an API key but declares 2 scopes",
        "POST /reads-its-own-headers: takes an API key but declares 0 scopes",
    ]


def test_only_api_deps_authenticates_a_key() -> None:
    found = [
        use
        for path in sources(ROOT, ("api",))
        if path != DEPS
        for use in authentications_outside_deps((ROOT / path).read_text(), path)
    ]

    assert found == []
    planted = "async def route(request):\n    tenant = await authenticate(session, key)\n"
    assert authentications_outside_deps(planted, Path("api/routes/x.py")) == [
        "api/routes/x.py:2: authenticate()"
    ]
