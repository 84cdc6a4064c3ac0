"""Text Postgres cannot store (issue 15, item 1): U+0000 and lone surrogates in any text field
are a 422 naming the field, on every route (JSON and multipart, tenant and admin), never a 500,
and nothing is stored: no job, no key, no tenant, no ledger movement.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from api.routes import account, admin, requests, webhooks
from relight.core.client_model import ClientModel
from relight.core.config import Settings
from relight.jobs.schemas import SubmitBody
from tests.conftest import TenantKey
from tests.helpers import SMALL_PNG_BASE64, assert_no_server_errors, balance_of, job_count
from tests.helpers import png_bytes as make_png

ADMIN_TOKEN = "y" * 32
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NUL = "\x00"
SURROGATE = "\ud800"
BAD_CHARACTERS = [pytest.param(NUL, id="nul"), pytest.param(SURROGATE, id="lone-surrogate")]
SUBMIT_ROUTES = ["/v2/ic-light", "/v1/ic-light"]
# Each text field of a submission, and a value for it that would be valid but for `bad`.
SUBMIT_FIELDS: dict[str, str] = {
    "prompt": "cat, {bad} warm light",
    "negative_prompt": "lowres{bad}",
    "appended_prompt": "best{bad} quality",
    "webhook_url": "http://127.0.0.1:9/hook{bad}",
    "subject_image": "http://127.0.0.1:9/cat{bad}.png",
}


def json_bytes(payload: dict[str, Any]) -> bytes:
    """JSON as a client would send it: lone surrogates as `\\ud800` escapes (what orjson and
    httpx refuse to write, but any hand-written client can)."""
    return json.dumps(payload).encode()


def assert_names_field(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["code"] == "validation_error", payload
    assert payload["field"] == field, payload
    assert field in payload["error"], payload


async def ledger_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("select count(*) from credit_entry")) or 0)


async def row_count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text(f"select count(*) from {table}")) or 0)


@pytest.fixture(autouse=True)
def no_server_errors(client: httpx.AsyncClient) -> Iterator[list[httpx.Response]]:
    with assert_no_server_errors(client) as seen:
        yield seen


# --- tenant routes: submit, JSON and multipart -----------------------------------------------


@pytest.mark.parametrize("route", SUBMIT_ROUTES)
@pytest.mark.parametrize("bad", BAD_CHARACTERS)
@pytest.mark.parametrize("field", list(SUBMIT_FIELDS))
async def test_unstorable_text_in_a_json_submission_is_a_422_naming_the_field(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    engine: AsyncEngine,
    route: str,
    bad: str,
    field: str,
) -> None:
    ledger_before = await ledger_rows(engine)
    payload = {
        "prompt": "cat",
        "subject_image": SMALL_PNG_BASE64,
        field: SUBMIT_FIELDS[field].format(bad=bad),
    }

    response = await client.post(
        route,
        headers={**tenant.headers, "content-type": "application/json"},
        content=json_bytes(payload),
    )

    assert_names_field(response, field)
    assert await job_count(engine) == 0
    assert await ledger_rows(engine) == ledger_before
    assert await balance_of(engine, tenant.tenant_id) == 1000


@pytest.mark.parametrize("route", SUBMIT_ROUTES)
@pytest.mark.parametrize("field", list(SUBMIT_FIELDS))
async def test_nul_in_a_multipart_submission_is_a_422_naming_the_field(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine, route: str, field: str
) -> None:
    data = {"prompt": "cat", field: SUBMIT_FIELDS[field].format(bad=NUL)}
    # The subject as an upload, unless the test puts its URL in the form.
    files = None if field == "subject_image" else {"subject_image": ("cat.png", make_png())}

    response = await client.post(route, headers=tenant.headers, data=data, files=files)

    assert_names_field(response, field)
    assert await job_count(engine) == 0
    assert await balance_of(engine, tenant.tenant_id) == 1000


async def test_nul_in_an_idempotency_key_is_a_422_naming_the_header(
    client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine
) -> None:
    response = await client.post(
        "/v2/ic-light",
        headers={**tenant.headers, "Idempotency-Key": "retry\x00-1"},
        json={"prompt": "cat", "subject_image": SMALL_PNG_BASE64},
    )

    assert_names_field(response, "Idempotency-Key")
    assert await job_count(engine) == 0


async def test_an_integer_beyond_64_bits_is_a_422_naming_the_field_not_a_400(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    """The same reading of JSON that lets a lone surrogate reach the field rule."""
    response = await client.post(
        "/v2/ic-light",
        headers={**tenant.headers, "content-type": "application/json"},
        content=b'{"prompt": "cat", "subject_image": "x", "seed": 99999999999999999999999}',
    )

    assert response.status_code == 422, response.text
    assert response.json()["field"] == "seed"


@pytest.mark.parametrize(
    "content",
    [b'{"prompt": "cat", "cfg": NaN}', b"[" * 100_000, '{"prompt": "cat"}'.encode("utf-16")],
)
async def test_what_neither_parser_accepts_as_json_stays_a_400(
    client: httpx.AsyncClient, tenant: TenantKey, content: bytes
) -> None:
    response = await client.post(
        "/v2/ic-light",
        headers={**tenant.headers, "content-type": "application/json"},
        content=content,
    )

    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_body"


# --- admin routes ----------------------------------------------------------------------------


@pytest.fixture
async def admin_app(settings: Settings, clean_state: None) -> AsyncIterator[FastAPI]:
    application = create_app(settings.model_copy(update={"admin_token": ADMIN_TOKEN}))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def admin_client(admin_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=admin_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        with assert_no_server_errors(client):
            yield client


@pytest.mark.parametrize("bad", BAD_CHARACTERS)
async def test_unstorable_text_in_a_tenant_name_is_a_422_and_creates_no_tenant(
    admin_client: httpx.AsyncClient, engine: AsyncEngine, bad: str
) -> None:
    response = await admin_client.post(
        "/admin/v1/tenants",
        headers={**ADMIN, "content-type": "application/json"},
        content=json_bytes({"name": f"acme{bad}", "credits": 10}),
    )

    assert_names_field(response, "name")
    assert await row_count(engine, "tenant") == 0
    assert await ledger_rows(engine) == 0


@pytest.mark.parametrize("bad", BAD_CHARACTERS)
async def test_unstorable_text_in_a_credit_reason_is_a_422_and_moves_nothing(
    admin_client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine, bad: str
) -> None:
    ledger_before = await ledger_rows(engine)

    response = await admin_client.post(
        f"/admin/v1/tenants/{tenant.name}/credits",
        headers={**ADMIN, "content-type": "application/json"},
        content=json_bytes({"amount": 50, "reason": f"goodwill{bad}"}),
    )

    assert_names_field(response, "reason")
    assert await ledger_rows(engine) == ledger_before
    assert await balance_of(engine, tenant.tenant_id) == 1000


@pytest.mark.parametrize("bad", BAD_CHARACTERS)
async def test_unstorable_text_in_a_key_name_is_a_422_and_creates_no_key(
    admin_client: httpx.AsyncClient, tenant: TenantKey, engine: AsyncEngine, bad: str
) -> None:
    keys_before = await row_count(engine, "api_key")

    response = await admin_client.post(
        f"/admin/v1/tenants/{tenant.name}/keys",
        headers={**ADMIN, "content-type": "application/json"},
        content=json_bytes({"name": f"ci{bad}"}),
    )

    assert_names_field(response, "name")
    assert await row_count(engine, "api_key") == keys_before


@pytest.mark.parametrize("bad", BAD_CHARACTERS)
async def test_unstorable_text_in_a_tenant_webhook_url_is_a_422_and_keeps_the_old_one(
    admin_client: httpx.AsyncClient, tenant: TenantKey, bad: str
) -> None:
    response = await admin_client.put(
        f"/admin/v1/tenants/{tenant.name}/webhook",
        headers={**ADMIN, "content-type": "application/json"},
        content=json_bytes({"url": f"http://127.0.0.1:9/hook{bad}"}),
    )

    assert_names_field(response, "url")
    shown = await admin_client.get(f"/admin/v1/tenants/{tenant.name}", headers=ADMIN)
    assert shown.json()["webhook_url"] is None


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/admin/v1/tenants/{bad}", "tenant"),
        ("GET", "/admin/v1/tenants/{bad}/ledger", "tenant"),
        ("POST", "/admin/v1/tenants/{bad}/suspend", "tenant"),
        ("POST", "/admin/v1/keys/{bad}/revoke", "prefix"),
    ],
)
async def test_nul_in_a_path_is_a_422_naming_the_parameter(
    admin_client: httpx.AsyncClient, tenant: TenantKey, method: str, path: str, field: str
) -> None:
    response = await admin_client.request(
        method, path.format(bad=quote(f"{tenant.name}\x00")), headers=ADMIN
    )

    assert_names_field(response, field)


@pytest.mark.parametrize("router", [admin.router, webhooks.router, requests.router, account.router])
def test_every_declared_request_body_is_a_model_with_the_text_rule(router: APIRouter) -> None:
    """The rule lives in the schema layer: a new route's body gets it by deriving from
    ClientModel, and this fails for one that does not. (The submit routes read their body
    into SubmitBody themselves.)"""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.body_field is not None:
            model = route.body_field.field_info.annotation
            assert isinstance(model, type), route.path
            assert issubclass(model, ClientModel), route.path
    assert issubclass(SubmitBody, ClientModel)
