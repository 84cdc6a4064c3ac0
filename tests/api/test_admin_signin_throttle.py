"""Throttled admin sign-in (issue 27): per client address, RELIGHT_ADMIN_SIGNIN_FAILURES_PER_MINUTE
(5) wrong admin tokens a minute, then 429 `too_many_failed_signins` with `Retry-After` on the
admin API and on the operators' page alike, the right token included, while another address
signs in as before. Failures are counted in Redis (this run's keys).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from api.app import create_app
from api.signin_throttle import SigninThrottle
from relight.core.config import Settings
from scripts.stack import free_port

ADMIN_TOKEN = "x" * 32
WRONG = {"Authorization": "Bearer " + "y" * 32}
RIGHT = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LIMIT = 5  # the default


@pytest.fixture
async def admin_app(settings: Settings, clean_state: None) -> AsyncIterator[FastAPI]:
    application = create_app(settings.model_copy(update={"admin_token": ADMIN_TOKEN}))
    async with application.router.lifespan_context(application):
        yield application


def client_from(app: FastAPI, host: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(host, 123))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["Retry-After"]) <= 60


async def test_the_sixth_wrong_admin_token_in_a_minute_is_a_429_for_that_address_only(
    admin_app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        client_from(admin_app, "10.0.0.7") as guesser,
        client_from(admin_app, "10.0.0.8") as operator,
    ):
        for _ in range(LIMIT):
            response = await guesser.get("/admin/v1/tenants", headers=WRONG)
            assert response.status_code == 401, response.text
        sixth = await guesser.get("/admin/v1/tenants", headers=WRONG)
        # With a body, the token is checked before the body is read (RequestLimits): same 429.
        with_body = await guesser.post("/admin/v1/tenants", headers=WRONG, json={"name": "x"})
        # The right token is refused too until the window passes.
        right_token = await guesser.get("/admin/v1/tenants", headers=RIGHT)
        other_address = await operator.get("/admin/v1/tenants", headers=RIGHT)
        other_wrong = await operator.get("/admin/v1/tenants", headers=WRONG)
        # A success elsewhere resets nothing.
        still = await guesser.get("/admin/v1/tenants", headers=RIGHT)

    for refused in (sixth, with_body, right_token, still):
        assert_throttled(refused)
        body = refused.json()
        assert body["code"] == "too_many_failed_signins"
        assert body["error"]
        assert body["request_id"]
    assert other_address.status_code == 200, other_address.text
    assert other_wrong.status_code == 401
    # Each failure and each refusal logged with the address, never the token.
    messages = [r.getMessage() for r in caplog.records if r.name == "api.signin_throttle"]
    assert sum("failed" in m and "10.0.0.7" in m for m in messages) == LIMIT
    assert sum("refused" in m and "10.0.0.7" in m for m in messages) == 4
    assert not any(ADMIN_TOKEN in m or "y" * 32 in m for m in messages)


async def test_the_sixth_wrong_token_on_the_operators_page_is_a_429_page(
    admin_app: FastAPI,
) -> None:
    async with (
        client_from(admin_app, "10.0.0.9") as guesser,
        client_from(admin_app, "10.0.0.10") as operator,
    ):
        for _ in range(LIMIT):
            response = await guesser.post("/admin/ui/login", data={"token": "y" * 32})
            assert response.status_code == 401, response.text
        sixth = await guesser.post("/admin/ui/login", data={"token": "y" * 32})
        right_token = await guesser.post("/admin/ui/login", data={"token": ADMIN_TOKEN})
        # The page and the API share the count: this address is refused on the API as well.
        api = await guesser.get("/admin/v1/tenants", headers=RIGHT)
        other = await operator.post("/admin/ui/login", data={"token": ADMIN_TOKEN})

    for refused in (sixth, right_token):
        assert_throttled(refused)
        assert refused.headers["content-type"].startswith("text/html")
        assert "Too many wrong admin tokens" in refused.text
        assert "relight_admin_session" not in refused.headers.get("set-cookie", "")
    assert_throttled(api)
    assert other.status_code == 303
    assert "relight_admin_session" in other.headers["set-cookie"]


async def test_a_missing_token_is_not_a_guess(admin_app: FastAPI) -> None:
    async with client_from(admin_app, "10.0.0.11") as client:
        for _ in range(LIMIT + 3):
            response = await client.get("/admin/v1/tenants")
            assert response.status_code == 401
        assert (await client.get("/admin/v1/tenants", headers=RIGHT)).status_code == 200


async def test_fails_open_when_redis_does_not_answer(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # A port nothing listens on: every Redis call fails at once.
    unreachable = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    throttle = SigninThrottle(settings, unreachable)
    try:
        for _ in range(LIMIT + 1):
            assert await throttle.refusal("10.0.0.12", "admin API") is None
            assert await throttle.record_failure("10.0.0.12", "admin API") is None
    finally:
        await unreachable.aclose()
    assert any("throttle unavailable" in r.getMessage() for r in caplog.records)
