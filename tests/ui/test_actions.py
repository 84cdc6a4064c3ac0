"""The operators' page's actions over plain HTTP (issue 27): every one needs the session's CSRF
token, asks for a confirmation that changes nothing, then acts as the admin API would and
redirects with a flash naming what happened; a value the services refuse re-shows the form
with the reason; every action done is logged with the operator's session.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
import uuid

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from api.ui.session import COOKIE_NAME
from relight.core.config import Settings
from relight.core.logs import JsonFormatter
from relight.ops.actions import credits_text
from relight.tenants.weight_mirror import tenant_weights_key
from tests.conftest import MakeTenant
from tests.helpers import balance_of, fast_body, submit
from tests.ui.conftest import ADMIN_TOKEN, sign_in

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FLASH = re.compile(r'<p class="(notice|error)" id="flash" role="status">([^<]*)</p>')
QUESTION = re.compile(r'<p id="confirm-question">([^<]*)</p>')


def question_of(page: httpx.Response) -> str:
    assert page.status_code == 200, page.text
    match = QUESTION.search(page.text)
    assert match is not None, page.text
    assert 'name="confirm" value="yes"' in page.text
    return html.unescape(match.group(1))


async def flash_after(client: httpx.AsyncClient, redirect: httpx.Response) -> tuple[str, str]:
    """Follow an action's redirect: (kind, message) of the flash the page then shows."""
    assert redirect.status_code == 303, redirect.text
    page = await client.get(redirect.headers["location"])
    assert page.status_code == 200, page.text
    match = FLASH.search(page.text)
    assert match is not None, page.text
    return match.group(1), html.unescape(match.group(2))


async def confirm_and_do(
    client: httpx.AsyncClient, path: str, csrf: str, form: dict[str, object] | None = None
) -> tuple[str, str]:
    """POST the action (its confirmation), then POST it confirmed: (question, flash)."""
    data = {**(form or {}), "csrf_token": csrf}
    question = question_of(await client.post(path, data=data))
    kind, message = await flash_after(
        client, await client.post(path, data={**data, "confirm": "yes"})
    )
    assert kind == "notice", message
    return question, message


async def tenant_view(client: httpx.AsyncClient, name: str) -> dict[str, object]:
    response = await client.get(f"/admin/v1/tenants/{name}", headers=ADMIN)
    assert response.status_code == 200, response.text
    view: dict[str, object] = response.json()
    return view


async def test_a_grant_is_confirmed_first_then_flashed_with_the_amount_and_new_balance(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    tenant = await make_tenant("acme", credits=1000)
    csrf = await sign_in(ui_client)
    path = "/admin/ui/tenants/acme/credits"
    form = {"amount": "500", "reason": "invoice 42", "kind": "grant"}
    asked = await ui_client.post(path, data={**form, "csrf_token": csrf})
    assert question_of(asked) == (
        "Grant 500 credits to tenant acme (reason “invoice 42”)? Balance 1,000 → 1,500."
    )
    # Asking changed nothing.
    assert await balance_of(engine, tenant.tenant_id) == 1000
    done = await ui_client.post(path, data={**form, "csrf_token": csrf, "confirm": "yes"})
    assert await flash_after(ui_client, done) == (
        "notice",
        "Granted 500 credits to acme; balance now 1,500.",
    )
    assert await balance_of(engine, tenant.tenant_id) == 1500


async def test_a_confirmation_sent_twice_acts_once(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    tenant = await make_tenant("acme", credits=1000)
    csrf = await sign_in(ui_client)
    path = "/admin/ui/tenants/acme/credits"
    asked = await ui_client.post(
        path, data={"amount": "500", "reason": "invoice 42", "kind": "grant", "csrf_token": csrf}
    )
    question_of(asked)
    # The confirmation page's form, as the browser would send it (twice: a double click).
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', asked.text))
    assert fields.keys() == {"csrf_token", "amount", "reason", "kind", "confirm", "once"}
    first = await ui_client.post(path, data=fields)
    second = await ui_client.post(path, data=fields)
    assert (await flash_after(ui_client, first))[1] == (
        "Granted 500 credits to acme; balance now 1,500."
    )
    assert await flash_after(ui_client, second) == (
        "error",
        "This confirmation was submitted already (a second click?): nothing was done again.",
    )
    assert await balance_of(engine, tenant.tenant_id) == 1500


async def test_canceling_a_queued_request_refunds_it_and_says_so(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    tenant = await make_tenant("acme", credits=1000)
    request_id = await submit(ui_client, tenant, fast_body())
    reserved = 1000 - await balance_of(engine, tenant.tenant_id)
    assert reserved > 0
    csrf = await sign_in(ui_client)
    page = await ui_client.get(f"/admin/ui/requests/{request_id}")
    assert 'id="cancel-request"' in page.text
    question, message = await confirm_and_do(
        ui_client, f"/admin/ui/requests/{request_id}/cancel", csrf
    )
    assert question == (
        f"Cancel request {request_id} of tenant acme? It is QUEUED; its {credits_text(reserved)} "
        f"reserved will be refunded (balance {1000 - reserved:,} → 1,000)."
    )
    assert message == (
        f"Canceled request {request_id} of acme (was QUEUED): now CANCELED, "
        f"{credits_text(reserved)} refunded; balance now 1,000."
    )
    record = await ui_client.get(f"/v2/requests/{request_id}", headers=tenant.headers)
    assert record.json()["status"] == "CANCELED"
    assert await balance_of(engine, tenant.tenant_id) == 1000
    ledger = await ui_client.get("/admin/v1/tenants/acme/ledger", headers=ADMIN)
    assert [(e["kind"], e["amount"]) for e in ledger.json()["data"][:2]] == [
        ("refund", reserved),
        ("reserve", -reserved),
    ]
    # Once canceled there is nothing to cancel: an error flash, no second refund.
    again = await ui_client.post(
        f"/admin/ui/requests/{request_id}/cancel", data={"csrf_token": csrf}
    )
    kind, said = await flash_after(ui_client, again)
    assert (kind, said) == ("error", f"request {request_id} is already CANCELED")
    assert await balance_of(engine, tenant.tenant_id) == 1000


async def test_a_batchs_webhook_before_its_end_is_refused_with_the_reason_on_the_failures_list(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("acme", credits=1000)
    submitted = await ui_client.post(
        "/v2/batches",
        headers=tenant.headers,
        json={"requests": [fast_body()], "webhook_url": "http://127.0.0.1:9/hook"},
    )
    assert submitted.status_code == 202, submitted.text
    batch_id = submitted.json()["batch_id"]
    csrf = await sign_in(ui_client)
    refused = await ui_client.post(
        f"/admin/ui/batches/{batch_id}/redeliver", data={"csrf_token": csrf}
    )
    assert refused.headers["location"].startswith("/admin/ui/webhooks?")
    assert await flash_after(ui_client, refused) == ("error", "the batch has not finished yet")


async def test_revoking_a_key_from_the_page_makes_it_401(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant("acme")
    other = await make_tenant("beta")
    csrf = await sign_in(ui_client)
    keys = (await ui_client.get("/admin/v1/tenants/acme/keys", headers=ADMIN)).json()
    prefix = keys[0]["prefix"]
    other_prefix = (await ui_client.get("/admin/v1/tenants/beta/keys", headers=ADMIN)).json()[0][
        "prefix"
    ]
    page = await ui_client.get("/admin/ui/tenants/acme")
    assert f'data-prefix="{prefix}"' in page.text
    # What the key may do, and the lanes the tenant may use, are on the page too.
    listed = re.search(rf'<tr data-prefix="{prefix}">(.*?)</tr>', page.text, re.S)
    assert listed is not None
    assert "account:read, relight:submit, requests:cancel" in listed.group(1)
    assert "<th>priority lanes</th><td>normal, low</td>" in page.text
    # Another tenant's key is not this tenant's to revoke.
    foreign = await ui_client.post(
        f"/admin/ui/tenants/acme/keys/{other_prefix}/revoke",
        data={"csrf_token": csrf, "confirm": "yes"},
    )
    assert foreign.status_code == 404
    assert f"tenant acme has no API key with prefix &#39;{other_prefix}&#39;" in foreign.text
    assert (await ui_client.get("/v2/account", headers=other.headers)).status_code == 200

    question, message = await confirm_and_do(
        ui_client, f"/admin/ui/tenants/acme/keys/{prefix}/revoke", csrf
    )
    assert question.startswith(f"Revoke API key {prefix} (test) of tenant acme?")
    assert message == f"Revoked API key {prefix} (test) of acme: requests with it now get 401."
    assert (await ui_client.get("/v2/account", headers=tenant.headers)).status_code == 401
    page = await ui_client.get("/admin/ui/tenants/acme")
    row = re.search(rf'<tr data-prefix="{prefix}">(.*?)</tr>', page.text, re.S)
    assert row is not None
    assert "Revoke" not in row.group(1)


async def test_limits_backends_and_weight_change_as_the_admin_api_and_weight_reaches_redis(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant, redis: Redis, settings: Settings
) -> None:
    tenant = await make_tenant("acme")
    csrf = await sign_in(ui_client)
    before = await tenant_view(ui_client, "acme")
    assert before["limits"] == {"requests_per_minute": 120, "burst": 30, "max_in_flight": 20}

    question, message = await confirm_and_do(
        ui_client,
        "/admin/ui/tenants/acme/limits",
        csrf,
        {"requests_per_minute": "60", "burst": "30", "max_in_flight": "5"},
    )
    assert question == (
        "Change the limits of tenant acme: requests a minute 120 → 60, at most in flight "
        "20 → 5? They apply from its next request."
    )
    assert message == (
        "Limits of acme now 60 requests a minute, burst 30, at most 5 in flight "
        "(requests a minute 120 → 60, at most in flight 20 → 5)."
    )
    assert (await tenant_view(ui_client, "acme"))["limits"] == {
        "requests_per_minute": 60,
        "burst": 30,
        "max_in_flight": 5,
    }

    _, message = await confirm_and_do(
        ui_client, "/admin/ui/tenants/acme/backends", csrf, {"backends": ["segmind"]}
    )
    assert message == "Backends of acme now segmind (were gpu, segmind, local)."
    assert (await tenant_view(ui_client, "acme"))["allowed_backends"] == ["segmind"]
    refused = await ui_client.post(
        "/v2/ic-light", headers=tenant.headers, json=fast_body(backend="local")
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "backend_not_allowed"

    weights = tenant_weights_key(settings.queue_name)
    await ui_client.post("/admin/ui/tenants/acme/weight", data={"weight": "5", "csrf_token": csrf})
    # The confirmation told the workers nothing.
    assert await redis.hget(weights, str(tenant.tenant_id)) is None  # type: ignore[misc]
    _, message = await confirm_and_do(
        ui_client, "/admin/ui/tenants/acme/weight", csrf, {"weight": "5"}
    )
    assert message == "Weight of acme now 5 (was 1); the workers read it at once."
    assert (await tenant_view(ui_client, "acme"))["weight"] == 5
    assert await redis.hget(weights, str(tenant.tenant_id)) == b"5"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("action", "form", "message"),
    [
        ("limits", {"burst": "0"}, "burst: input should be greater than or equal to 1"),
        ("limits", {"requests_per_minute": "ten"}, "requests_per_minute: input should be a valid"),
        ("limits", {}, "give at least one of requests_per_minute, burst, max_in_flight"),
        ("limits", {"burst": "30"}, "these are acme&#39;s limits already: nothing to change"),
        ("backends", {}, "backends must be a non-empty list of"),
        ("backends", {"backends": ["tpu"]}, "unknown: tpu"),
        ("weight", {"weight": "0"}, "weight: input should be greater than or equal to 1"),
        ("weight", {"weight": "101"}, "weight: input should be less than or equal to 100"),
        ("weight", {"weight": ""}, "weight: input should be a valid integer"),
        ("credits", {"amount": "-5000", "reason": "x", "kind": "adjust"}, "the balance negative"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("confirmed", [False, True])
async def test_a_refused_change_shows_the_form_again_with_the_reason(
    ui_client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    engine: AsyncEngine,
    action: str,
    form: dict[str, object],
    message: str,
    confirmed: bool,
) -> None:
    tenant = await make_tenant("acme", credits=100)
    csrf = await sign_in(ui_client)
    before = await tenant_view(ui_client, "acme")
    data = {**form, "csrf_token": csrf, **({"confirm": "yes"} if confirmed else {})}
    response = await ui_client.post(f"/admin/ui/tenants/acme/{action}", data=data)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("text/html")
    error = re.search(r'<p class="error" id="action-error">([^<]*)</p>', response.text)
    assert error is not None
    assert message.lower() in error.group(1).lower()
    assert 'id="confirm-question"' not in response.text
    # What was typed is still in the form.
    for name, value in form.items():
        if isinstance(value, str) and value:
            assert f'name="{name}"' in response.text
            assert f'value="{value}"' in response.text
    assert await tenant_view(ui_client, "acme") == before
    assert await balance_of(engine, tenant.tenant_id) == 100


ACTIONS = [
    "/admin/ui/tenants/acme/credits",
    "/admin/ui/tenants/acme/limits",
    "/admin/ui/tenants/acme/backends",
    "/admin/ui/tenants/acme/weight",
    "/admin/ui/tenants/acme/suspend",
    "/admin/ui/tenants/acme/resume",
    "/admin/ui/tenants/acme/keys/{prefix}/revoke",
    "/admin/ui/requests/{request_id}/cancel",
    "/admin/ui/requests/{request_id}/redeliver",
    "/admin/ui/batches/{batch_id}/redeliver",
]


async def test_every_action_without_the_sessions_csrf_token_is_a_403_page_and_changes_nothing(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant, engine: AsyncEngine
) -> None:
    tenant = await make_tenant("acme", credits=1000)
    request_id = await submit(ui_client, tenant, fast_body())
    prefix = (await ui_client.get("/admin/v1/tenants/acme/keys", headers=ADMIN)).json()[0]["prefix"]
    csrf = await sign_in(ui_client)
    before = await tenant_view(ui_client, "acme")
    balance = await balance_of(engine, tenant.tenant_id)
    values = {
        "amount": "500", "reason": "r", "kind": "grant", "requests_per_minute": "1",
        "burst": "1", "max_in_flight": "1", "backends": ["local"], "weight": "9",
    }  # fmt: skip
    for template in ACTIONS:
        path = template.format(prefix=prefix, request_id=request_id, batch_id=uuid.uuid4())
        for token in [None, "", "0" * 64, csrf[:-1]]:
            for confirm in [{}, {"confirm": "yes"}]:
                data = {**values, **confirm}
                if token is not None:
                    data["csrf_token"] = token
                response = await ui_client.post(path, data=data)
                assert response.status_code == 403, (path, token, response.text)
                assert response.headers["content-type"].startswith("text/html")
                assert "did not come from this page" in response.text
    assert await tenant_view(ui_client, "acme") == before
    assert await balance_of(engine, tenant.tenant_id) == balance
    status = await ui_client.get(f"/v2/requests/{request_id}", headers=tenant.headers)
    assert status.json()["status"] == "QUEUED"
    assert (await ui_client.get("/v2/account", headers=tenant.headers)).status_code == 200


async def test_a_flash_shows_only_in_the_session_that_signed_it(
    ui_client: httpx.AsyncClient, ui_app: object, make_tenant: MakeTenant
) -> None:
    await make_tenant("acme")
    csrf = await sign_in(ui_client)
    done = await ui_client.post(
        "/admin/ui/tenants/acme/weight", data={"weight": "3", "csrf_token": csrf, "confirm": "yes"}
    )
    location = done.headers["location"]
    assert FLASH.search((await ui_client.get(location)).text) is not None
    # A message of someone else's choosing, or this one in another session: not shown.
    forged = location.replace("Weight", "Refund")
    assert FLASH.search((await ui_client.get(forged)).text) is None
    transport = httpx.ASGITransport(app=ui_app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
        await sign_in(other)
        assert FLASH.search((await other.get(location)).text) is None


async def test_each_action_done_is_logged_with_the_operator_session_and_what_changed(
    ui_client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await make_tenant("acme", credits=1000)
    csrf = await sign_in(ui_client)
    nonce = ui_client.cookies[COOKIE_NAME].split(".")[1]
    session_id = hashlib.sha256(nonce.encode()).hexdigest()[:12]
    caplog.set_level(logging.INFO, logger="relight.ops.actions")
    form = {"amount": "250", "reason": "ticket 9", "kind": "grant", "csrf_token": csrf}
    await ui_client.post("/admin/ui/tenants/acme/credits", data=form)
    # Asking is not doing: nothing logged yet.
    assert [r for r in caplog.records if r.name == "relight.ops.actions"] == []
    await ui_client.post("/admin/ui/tenants/acme/credits", data={**form, "confirm": "yes"})
    [record] = [r for r in caplog.records if r.name == "relight.ops.actions"]
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "operator action move_credits: grant of 250 credits to acme"
    assert line["operator_session"] == session_id
    assert nonce not in json.dumps(line)
    assert {key: line[key] for key in ("action", "tenant", "kind", "amount", "reason")} == {
        "action": "move_credits",
        "tenant": "acme",
        "kind": "grant",
        "amount": 250,
        "reason": "ticket 9",
    }
    assert (line["balance_before"], line["balance_after"]) == (1000, 1250)


async def test_an_unknown_request_or_tenant_is_a_404_page(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    await make_tenant("acme")
    csrf = await sign_in(ui_client)
    for path in [
        f"/admin/ui/requests/{uuid.uuid4()}/cancel",
        f"/admin/ui/requests/{uuid.uuid4()}/redeliver",
        f"/admin/ui/batches/{uuid.uuid4()}/redeliver",
        "/admin/ui/tenants/nobody/limits",
        "/admin/ui/tenants/acme/keys/nokey/revoke",
        "/admin/ui/tenants/acme/promote",
    ]:
        response = await ui_client.post(path, data={"csrf_token": csrf})
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("text/html")
