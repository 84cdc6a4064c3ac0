"""Schemathesis over the gateway's OpenAPI spec (issue 7, must show 6): no 5xx, and no answer
the spec does not describe (undocumented status code, wrong content type, body off its schema).

One test per operation (schemathesis' pytest integration): its examples, coverage and fuzzing
phases, positive and negative data, a fixed seed and derandomized generation. The app runs
in-process over schemathesis' ASGI transport (lifespan included) against the real Postgres and
Redis of the test run. Every call carries the API key of a tenant from `make_tenant`; `/admin/v1`
calls also carry the admin token.

So that the fuzzing reaches more than 404s, the operations that take a request id run against a
finished request of that tenant (outputs, a delivered webhook), and the tenant's name is among
the values drawn for `{tenant}`. The number of cases run, by operation and status code, is
printed in pytest's summary.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis import checks
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.app import create_app
from relight.core.config import Settings
from relight.core.storage.urls import INPUT_INDEX, sign_output
from relight.tenants.schemas import LimitsUpdate
from relight.tenants.scopes import ALL_SCOPES
from relight.tenants.service import create_api_key, find_tenant, set_limits
from tests.conftest import MakeTenant, RunWorker
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import png_bytes

pytestmark = pytest.mark.slow

ApiCase = schemathesis.Case[Any]

ADMIN_TOKEN = "x" * 32
TENANT = "schemathesis"
# Stand-ins drawn from dictionaries (the real values exist only once the test runs): the test
# swaps them for the seeded request's id, and for a valid signature of its input or output.
SEEDED_REQUEST = "00000000-0000-4000-8000-00000000beef"
SEEDED_SIGNATURE = "seeded-signature"
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 7,
        "generation": {"mode": "all", "max-examples": 10, "deterministic": True},
        "phases": {"stateful": {"enabled": False}},
        "dictionaries": {
            "request-ids": {"values": [SEEDED_REQUEST]},
            "signatures": {"values": [SEEDED_SIGNATURE]},
            "tenants": {"values": [TENANT]},
            "output-indexes": {"values": [0]},
        },
        "parameters": {
            "path.request_id": {"dictionary": "request-ids", "probability": 0.5},
            "query.signature": {"dictionary": "signatures", "probability": 0.5},
            "path.index": {"dictionary": "output-indexes", "probability": 0.5},
            "path.tenant": {"dictionary": "tenants", "probability": 0.5},
        },
    }
)
# The spec does not depend on the settings; the app under test is built per test (`gateway`).
# (Not `schemathesis.pytest.from_fixture`: its lazy tests set `Function._nodeid`, which pytest 9.2
# no longer has.)
schema = schemathesis.openapi.from_dict(
    create_app(Settings(environment="test")).openapi(), config=CONFIG
)

# Cases run, by operation and status code: the figure the issue asks for.
CASES: Counter[tuple[str, int]] = Counter()


class CaseFigures:
    """Prints the cases run in pytest's summary (a plugin: the hook is not a conftest's)."""

    def __init__(self, cases: Counter[tuple[str, int]]) -> None:
        self.cases = cases

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        operations = sorted({label for label, _ in self.cases})
        terminalreporter.section("schemathesis figures")
        terminalreporter.write_line(f"{self.cases.total()} cases over {len(operations)} operations")
        for label in operations:
            statuses = {code: n for (name, code), n in sorted(self.cases.items()) if name == label}
            terminalreporter.write_line(f"  {label:<50} {statuses}")


@pytest.fixture(scope="module", autouse=True)
def report_cases(request: pytest.FixtureRequest) -> None:
    if not request.config.pluginmanager.has_plugin("schemathesis-figures"):
        request.config.pluginmanager.register(CaseFigures(CASES), "schemathesis-figures")


@dataclass(frozen=True)
class Seeded:
    api_key: str
    request_id: str


async def finished_request(settings: Settings, api_key: str, run_worker: RunWorker) -> str:
    """A request of the tenant's, completed, with one output and one delivered webhook."""
    image = base64.b64encode(png_bytes((96, 120), (90, 140, 200))).decode()
    app = create_app(settings)
    with WebhookReceiver() as receiver:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver"
            ) as client,
        ):
            response = await client.post(
                "/v2/ic-light",
                headers={"x-api-key": api_key},
                json={
                    "prompt": "cat, soft window light",
                    "subject_image": image,
                    "width": 256,
                    "height": 256,
                    "highres_scale": 1,
                    "steps": 10,
                    "output_format": "png",
                    "webhook_url": receiver.url(),
                },
            )
            assert response.status_code == 202, response.text
            await run_worker()
            request_id: str = response.json()["request_id"]
            record = await client.get(f"/v2/requests/{request_id}", headers={"x-api-key": api_key})
            assert record.json()["status"] == "COMPLETED", record.text
    return request_id


@pytest.fixture
async def seeded(
    request: pytest.FixtureRequest,
    settings: Settings,
    make_tenant: MakeTenant,
    sessionmaker: async_sessionmaker[AsyncSession],
    run_worker: RunWorker,
) -> Seeded:
    """The tenant (limits raised, so fuzzing is not all 429s after the first burst) with a key
    holding every scope (so that `/v2/keys` is reached, not only refused), and for the
    operations that take a request id, a finished request of its own."""
    created = await make_tenant(TENANT, credits=1_000_000)
    unlimited = LimitsUpdate(requests_per_minute=1_000_000, burst=100_000, max_in_flight=100_000)
    async with sessionmaker() as session, session.begin():
        tenant = await find_tenant(session, created.name)
        await set_limits(session, tenant, unlimited)
        api_key = (await create_api_key(session, tenant, "fuzz", scopes=list(ALL_SCOPES))).key
    request_id = SEEDED_REQUEST
    if "{request_id}" in request.node.name:
        request_id = await finished_request(settings, api_key, run_worker)
    return Seeded(api_key=api_key, request_id=request_id)


@pytest.fixture
def gateway(settings: Settings, clean_state: None) -> FastAPI:
    """The app with the admin API on; schemathesis runs its lifespan on first call.

    No worker runs, so a synchronous submit waits `sync_timeout_s` for nothing: keep it short.
    """
    return create_app(
        settings.model_copy(update={"admin_token": ADMIN_TOKEN, "sync_timeout_s": 0.5})
    )


def use_seeded_values(case: ApiCase, seeded: Seeded, settings: Settings) -> None:
    """Swap the stand-ins for the seeded request's id and a valid signature of its input or
    output (a signature only signs the seeded request, so only with its id)."""
    path_parameters = case.path_parameters or {}
    if path_parameters.get("request_id") != SEEDED_REQUEST:
        return
    path_parameters["request_id"] = seeded.request_id
    query = case.query or {}
    if query.get("signature") != SEEDED_SIGNATURE:
        return
    index = INPUT_INDEX if case.path.endswith("/input") else path_parameters.get("index")
    if isinstance(index, int):
        query["expires"], query["signature"] = sign_output(
            settings.secret_key, uuid.UUID(seeded.request_id), index, ttl_s=3600
        )


def is_sync_timeout(case: ApiCase, response: schemathesis.Response) -> bool:
    """`POST /v1/ic-light` answers 504 `timeout` when its job does not finish within
    `sync_timeout_s` (Segmind's synchronous contract, documented in the spec). With no worker
    here, every valid synchronous submit ends so; that one answer is not a server error."""
    return (
        case.operation.label == "POST /v1/ic-light"
        and response.status_code == 504
        and bool(response.json().get("code") == "timeout")
    )


def call_and_check(case: ApiCase, gateway: FastAPI, seeded: Seeded) -> schemathesis.Response:
    headers = {"x-api-key": seeded.api_key}
    if case.path.startswith("/admin/v1/"):
        headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    response = case.call(app=gateway, headers=headers)
    CASES[case.operation.label, response.status_code] += 1
    to_run = CHECKS
    if is_sync_timeout(case, response):
        to_run = [check for check in CHECKS if check is not checks.not_a_server_error]
    case.validate_response(response, checks=to_run, headers=headers)
    return response


@schema.parametrize()
# Each case makes database round trips (no deadline), and negative generation filters a lot.
@hypothesis_settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_spec(
    case: ApiCase, gateway: FastAPI, seeded: Seeded, settings: Settings
) -> None:
    use_seeded_values(case, seeded, settings)
    call_and_check(case, gateway, seeded)


def test_what_schemathesis_found_stays_fixed(gateway: FastAPI, seeded: Seeded) -> None:
    """Its findings, replayed: the generator need not draw them again. A signature with a
    non-ASCII character made `hmac.compare_digest` raise (500); it is a 401 now."""
    expires = int(time.time()) + 3600
    signed: list[tuple[str, dict[str, Any]]] = [
        ("/v2/requests/{request_id}/input", {"request_id": SEEDED_REQUEST}),
        ("/v2/requests/{request_id}/outputs/{index}", {"request_id": SEEDED_REQUEST, "index": 0}),
    ]
    for path, path_parameters in signed:
        case = schema[path]["GET"].Case(
            path_parameters=path_parameters, query={"expires": expires, "signature": "\x80"}
        )
        response = call_and_check(case, gateway, seeded)
        assert response.status_code == 401, response.text
