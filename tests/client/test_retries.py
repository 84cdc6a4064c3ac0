"""Retries as a user meets them: a real 429 from the tenant's limits, a 503 and a dropped
connection from a real proxy in front of the live api, and the ledger proving one charge."""

from __future__ import annotations

import time

import pytest
from relight_client import (
    AsyncRelight,
    ConnectionFailedError,
    RateLimitError,
    Relight,
    ServiceUnavailableError,
    Status,
)
from relight_client.admin import Admin

from tests.client.conftest import Account, fast
from tests.fakes.flaky_proxy import Fault, FlakyProxy
from tests.helpers import png_bytes

pytestmark = pytest.mark.slow

SUBMIT = "/v2/ic-light"


def submit_statuses(proxy: FlakyProxy) -> list[int | str]:
    return [exchange.outcome for exchange in proxy.exchanges("POST", SUBMIT)]


def test_a_rate_limited_submit_waits_for_retry_after_then_goes_through(
    admin: Admin, account: Account, proxy: FlakyProxy
) -> None:
    admin.set_limits(account.name, requests_per_minute=60, burst=1)

    with Relight(proxy.url, account.key) as client:
        first = client.relight(png_bytes(), "cat", **fast())
        started = time.monotonic()
        second = client.relight(png_bytes(), "cat", **fast())
        waited = time.monotonic() - started

    assert submit_statuses(proxy) == [202, 429, 202]
    assert waited >= 0.5  # Retry-After (1 s at 60 a minute), not an immediate hammering
    assert first.id != second.id


def test_with_retries_off_a_429_raises_with_retry_after(
    base_url: str, admin: Admin, account: Account
) -> None:
    admin.set_limits(account.name, requests_per_minute=1, burst=1)

    with Relight(base_url, account.key, max_retries=0) as client:
        client.relight(png_bytes(), "cat", **fast())
        with pytest.raises(RateLimitError) as raised:
            client.relight(png_bytes(), "cat", **fast())

    assert raised.value.status_code == 429
    assert raised.value.code == "rate_limited"
    assert raised.value.retry_after is not None
    assert raised.value.retry_after > 1


def test_a_503_with_retry_after_is_retried_and_charged_once(
    admin: Admin, account: Account, proxy: FlakyProxy
) -> None:
    proxy.script("POST", SUBMIT, [Fault.answer(503, {"Retry-After": "1"})])

    with Relight(proxy.url, account.key) as client:
        started = time.monotonic()
        request = client.relight(png_bytes(), "cat", **fast())
        waited = time.monotonic() - started
        record = request.wait(timeout=60)

    assert submit_statuses(proxy) == [503, 202]
    assert waited >= 1
    assert record.status is Status.COMPLETED
    kinds = [entry.kind for entry in admin.ledger(account.name)]
    assert kinds == ["charge", "reserve", "grant"]


def test_503s_beyond_max_retries_raise(account: Account, proxy: FlakyProxy) -> None:
    proxy.script("GET", "/v2/account", [Fault.answer(503, {"Retry-After": "0"})] * 3)

    with Relight(proxy.url, account.key, max_retries=2) as client:
        with pytest.raises(ServiceUnavailableError) as raised:
            client.account()
        assert client.account().name == account.name

    assert raised.value.status_code == 503
    assert [e.outcome for e in proxy.exchanges("GET", "/v2/account")] == [503, 503, 503, 200]


def test_a_retry_after_beyond_max_retry_after_is_raised_at_once(
    account: Account, proxy: FlakyProxy
) -> None:
    proxy.script("GET", "/v2/account", [Fault.answer(503, {"Retry-After": "120"})])

    with Relight(proxy.url, account.key, max_retry_after=60) as client:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as raised:
            client.account()

    # Raised at once: nowhere near the 120 s asked for, nor even max_retry_after.
    assert time.monotonic() - started < 60
    assert raised.value.retry_after == 120


def test_a_submit_whose_answer_was_lost_is_resent_and_charged_once(
    admin: Admin, account: Account, proxy: FlakyProxy
) -> None:
    # The api accepts and charges the first POST; the proxy hangs up before the answer.
    proxy.script("POST", SUBMIT, [Fault.drop_after_forward()])

    with Relight(proxy.url, account.key) as client:
        request = client.relight(png_bytes(), "cat", **fast())
        record = request.wait(timeout=60)
        listed = list(client.requests.list())
        balance = client.account().credits

    sent = proxy.exchanges("POST", SUBMIT)
    assert [exchange.outcome for exchange in sent] == ["dropped", 202]
    keys = {exchange.headers["idempotency-key"] for exchange in sent}
    assert len(keys) == 1  # the same logical call, so the same key: the api replayed it
    assert [item.request_id for item in listed] == [request.id]
    assert record.status is Status.COMPLETED
    assert balance == 1000 - record.credits.charged
    kinds = [entry.kind for entry in admin.ledger(account.name)]
    assert kinds == ["charge", "reserve", "grant"]


def test_each_logical_submit_gets_its_own_key(account: Account, proxy: FlakyProxy) -> None:
    with Relight(proxy.url, account.key) as client:
        first = client.relight(png_bytes(), "cat", **fast())
        second = client.relight(png_bytes(), "cat", **fast())

    keys = [exchange.headers["idempotency-key"] for exchange in proxy.exchanges("POST", SUBMIT)]
    assert first.id != second.id
    assert len(set(keys)) == 2


def test_a_cancel_whose_answer_was_lost_is_not_resent(account: Account, proxy: FlakyProxy) -> None:
    with Relight(proxy.url, account.key) as client:
        request = client.relight(png_bytes(), "cat", wait=30, **fast())
        cancel = f"/v2/requests/{request.id}/cancel"
        proxy.script("POST", cancel, [Fault.drop_after_forward()])
        with pytest.raises(ConnectionFailedError):
            request.cancel()

    assert len(proxy.exchanges("POST", cancel)) == 1


async def test_async_client_retries_a_503_and_a_lost_answer_alike(
    admin: Admin, account: Account, proxy: FlakyProxy
) -> None:
    proxy.script(
        "POST", SUBMIT, [Fault.answer(503, {"Retry-After": "0"}), Fault.drop_after_forward()]
    )

    async with AsyncRelight(proxy.url, account.key) as client:
        request = await client.relight(png_bytes(), "cat", **fast())
        record = await request.wait(timeout=60)

    assert submit_statuses(proxy) == [503, "dropped", 202]
    assert record.status is Status.COMPLETED
    kinds = [entry.kind for entry in admin.ledger(account.name)]
    assert kinds == ["charge", "reserve", "grant"]
