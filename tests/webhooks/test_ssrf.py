"""SSRF (issue 4, must show 3): with the allow-list empty, private and loopback destinations in
every spelling are refused for webhooks and `subject_image`, and no connection is made.

The refusals are shown at three levels: at submit (422, for what is knowable without DNS), in the
worker (a job whose URL was changed behind the API's back, a delivery pointed elsewhere), and in
`relight.core.egress` itself (address classes, numeric forms, IPv6 wrappers, the allow-list, and the
connection to the checked address with the original Host header).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from relight.core.config import Settings
from relight.core.egress import (
    Destination,
    EgressPolicy,
    EgressRefused,
    check_url,
    egress_stream,
    is_public,
    literal_address,
    resolve,
)
from relight.core.errors import InvalidParameter
from relight.core.fetch import fetch_image_bytes
from tests.conftest import TenantKey
from tests.fakes.image_server import ImageServer
from tests.fakes.webhook_receiver import Reply, WebhookReceiver
from tests.helpers import fast_body as body
from tests.helpers import get_record, job_count, submit
from worker.settings import build_worker

# The hosts of issue 4's list, as they appear in a URL.
REFUSED_HOSTS = [
    "127.0.0.1",
    "localhost",
    "10.0.0.1",
    "169.254.169.254",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "0x7f000001",
    "2130706433",
]
NO_POLICY = EgressPolicy()


@pytest.fixture
def strict_settings(settings: Settings) -> Settings:
    """The test settings with nothing allowed: 127.0.0.1 is as private as anything else."""
    return settings.model_copy(update={"egress_allowlist": ""})


@pytest.fixture
async def strict_client(
    strict_settings: Settings, clean_state: None
) -> AsyncIterator[httpx.AsyncClient]:
    application: FastAPI = create_app(strict_settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def run_strict_worker(settings: Settings) -> None:
    """A burst worker whose egress policy allows nothing private."""
    worker = build_worker(settings, burst=True, poll_delay=0, handle_signals=False)
    try:
        await worker.async_run()
    finally:
        await worker.close()


# --- at submit: 422, nothing queued, nobody called ------------------------------------------


@pytest.mark.parametrize("host", REFUSED_HOSTS)
async def test_webhook_url_is_refused_at_submit(
    strict_client: httpx.AsyncClient, tenant: TenantKey, receiver: WebhookReceiver, host: str
) -> None:
    url = receiver.url("/hook", host=host)
    response = await strict_client.post(
        "/v2/ic-light", headers=tenant.headers, json=body(webhook_url=url)
    )
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["code"] == "url_not_allowed"
    assert error["field"] == "webhook_url"
    assert "webhook_url" in error["error"]
    assert receiver.received() == []


@pytest.mark.parametrize("host", REFUSED_HOSTS)
async def test_subject_image_url_is_refused_at_submit(
    strict_client: httpx.AsyncClient,
    tenant: TenantKey,
    image_server: ImageServer,
    engine: AsyncEngine,
    host: str,
) -> None:
    seen = len(image_server.requests)
    url = f"http://{host}:{image_server.port}/chelsea.png"
    response = await strict_client.post(
        "/v2/ic-light", headers=tenant.headers, json=body(subject_image=url)
    )
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["code"] == "url_not_allowed"
    assert error["field"] == "subject_image"
    assert await job_count(engine) == 0
    assert len(image_server.requests) == seen


async def test_public_urls_pass_the_submit_check(
    strict_client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await strict_client.post(
        "/v2/ic-light",
        headers=tenant.headers,
        json=body(webhook_url="https://hooks.example.com/relight"),
    )
    assert response.status_code == 202, response.text


# --- in the worker: what got past the API is refused before any connection ------------------


async def test_worker_refuses_subject_image_urls_in_every_spelling(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    image_server: ImageServer,
    engine: AsyncEngine,
    strict_settings: Settings,
) -> None:
    """Jobs accepted under the test allow-list, then run by a worker that allows nothing."""
    request_ids = []
    for host in REFUSED_HOSTS:
        request_id = await submit(
            client, tenant, body(subject_image=image_server.url("/chelsea.png"))
        )
        async with engine.begin() as connection:
            await connection.execute(
                text("update job set input_url = :url where id = :id"),
                {"url": f"http://{host}:{image_server.port}/chelsea.png", "id": request_id},
            )
        request_ids.append(request_id)
    seen = len(image_server.requests)

    await run_strict_worker(strict_settings)

    for host, request_id in zip(REFUSED_HOSTS, request_ids, strict=True):
        record = await get_record(client, tenant, request_id)
        assert record["status"] == "FAILED", host
        assert record["error_code"] == "url_not_allowed", (host, record["error"])
        assert "not a public address" in record["error"], host
        assert record["attempts"] == 1, host  # a refusal is final, not retried
        assert record["credits"]["charged"] == 0
    assert len(image_server.requests) == seen


async def test_worker_refuses_webhook_deliveries_in_every_spelling(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    receiver: WebhookReceiver,
    engine: AsyncEngine,
    strict_settings: Settings,
) -> None:
    """Deliveries whose URL is a private address (however spelled) are refused at every
    attempt; each attempt records why, and the receiver never hears a thing."""
    request_ids = []
    for host in REFUSED_HOSTS:
        request_id = await submit(client, tenant, body(webhook_url=receiver.url("/hook")))
        async with engine.begin() as connection:
            await connection.execute(
                text("update job set webhook_url = :url where id = :id"),
                {"url": receiver.url("/hook", host=host), "id": request_id},
            )
        request_ids.append(request_id)

    await run_strict_worker(strict_settings)

    attempts_per_delivery = 1 + len(strict_settings.webhook_retry_delays)
    for host, request_id in zip(REFUSED_HOSTS, request_ids, strict=True):
        assert (await get_record(client, tenant, request_id))["status"] == "COMPLETED"
        response = await client.get(f"/v2/requests/{request_id}/webhooks", headers=tenant.headers)
        [delivery] = response.json()["data"]
        assert delivery["status"] == "failed", host
        assert delivery["attempts"] == attempts_per_delivery, host
        for attempt in delivery["attempt_log"]:
            assert attempt["status_code"] is None
            assert "not a public address" in attempt["error"], (host, attempt["error"])
    assert receiver.received() == []


async def test_delivery_row_pointed_at_a_private_address_is_refused(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    receiver: WebhookReceiver,
    engine: AsyncEngine,
    strict_settings: Settings,
) -> None:
    """A redelivery whose row now names the metadata address goes nowhere (allow-list empty)."""
    request_id = await submit(client, tenant, body(webhook_url=receiver.url("/hook")))
    await run_strict_worker(strict_settings)  # 127.0.0.1 is refused here, too
    async with engine.begin() as connection:
        await connection.execute(
            text("update webhook_delivery set url = 'http://169.254.169.254/latest/meta-data'")
        )
    response = await client.post(
        f"/v2/requests/{request_id}/webhooks/redeliver", headers=tenant.headers
    )
    assert response.status_code == 202, response.text
    await run_strict_worker(strict_settings)

    response = await client.get(f"/v2/requests/{request_id}/webhooks", headers=tenant.headers)
    [delivery] = response.json()["data"]
    assert delivery["status"] == "failed"
    assert "169.254.169.254" in delivery["last_error"]
    assert "not a public address" in delivery["last_error"]
    assert receiver.received() == []


# --- relight.core.egress -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("10.0.0.1", "10.0.0.1"),
        ("169.254.169.254", "169.254.169.254"),
        ("8.8.8.8", "8.8.8.8"),
        ("[2606:4700::1111]", "2606:4700::1111"),
        ("localhost", None),
        ("example.com", None),
        ("1.2.3.4.5", None),
        ("0x", None),
    ],
)
def test_literal_address(host: str, expected: str | None) -> None:
    found = literal_address(host)
    assert found == (None if expected is None else ipaddress.ip_address(expected))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # link-local: cloud metadata
        "100.64.0.1",  # CGNAT
        "0.0.0.0",
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::a00:1",  # local-use NAT64 of 10.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    ],
)
def test_private_and_wrapped_addresses_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))
    assert not NO_POLICY.allows_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "2001:4860:4860::8888", "::ffff:8.8.8.8"],
)
def test_public_addresses_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        *(f"http://{host}:8080/hook" for host in REFUSED_HOSTS),
        "http://sub.localhost/hook",
        "http://LOCALHOST./hook",
        "http://127.1/hook",
        "http://0177.0.0.1/hook",
        "http://100.64.0.1/hook",
        "http://[64:ff9b::7f00:1]/hook",
        "http://[2002:7f00:1::]/hook",
        "https://[fe80::1]/hook",
        "http://0.0.0.0:8080/hook",
    ],
)
def test_check_url_refuses_what_no_lookup_can_save(url: str) -> None:
    with pytest.raises(EgressRefused) as refused:
        check_url(url, NO_POLICY, field="webhook_url")
    assert refused.value.status_code == 422
    assert refused.value.code == "url_not_allowed"
    assert refused.value.extra["field"] == "webhook_url"


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/relight",
        "http://8.8.8.8/hook",
        "https://[2606:4700::1111]:8443/hook",
        "http://internal.example/hook",  # a name: judged when it is resolved
    ],
)
def test_check_url_passes_public_destinations(url: str) -> None:
    check_url(url, NO_POLICY, field="webhook_url")


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "file:///etc/passwd", "http:///nohost", "https://u:p@example.com/"],
)
def test_check_url_refuses_malformed_urls(url: str) -> None:
    with pytest.raises(InvalidParameter):
        check_url(url, NO_POLICY, field="webhook_url")


def test_allow_list_by_cidr_and_by_host_name() -> None:
    policy = EgressPolicy.parse(" 10.0.0.0/8, [fd00::1] ,images.internal., 127.0.0.1 ")
    assert policy.allowed_hosts == frozenset({"images.internal"})
    check_url("http://10.20.30.40/x", policy, field="f")
    check_url("http://0x0a000001/x", policy, field="f")  # 10.0.0.1, however spelled
    check_url("http://[fd00::1]/x", policy, field="f")
    check_url("http://127.0.0.1:9000/x", policy, field="f")
    check_url("http://Images.Internal/x", policy, field="f")
    for refused in (
        "http://192.168.0.1/x",
        "http://[fd00::2]/x",
        "http://127.0.0.2/x",
        "http://localhost/x",  # a name, not the CIDR
    ):
        with pytest.raises(EgressRefused):
            check_url(refused, policy, field="f")
    # A host name on the list admits that name, localhost included.
    check_url("http://localhost:9000/x", EgressPolicy.parse("localhost"), field="f")


def destination(host: str, port: int = 80) -> Destination:
    return Destination(scheme="http", host=host, port=port, path="/")


@pytest.mark.parametrize("host", [h.strip("[]") for h in REFUSED_HOSTS])
async def test_resolve_refuses_every_spelling(host: str) -> None:
    with pytest.raises(EgressRefused, match="not a public address") as refused:
        await resolve(destination(host), NO_POLICY, field="webhook_url")
    assert refused.value.extra["field"] == "webhook_url"


async def test_resolve_looks_up_names_and_refuses_private_answers() -> None:
    # localhost is a name; its address (from /etc/hosts) is what is judged.
    with pytest.raises(EgressRefused, match=r"localhost resolves to 127\.0\.0\.1"):
        await resolve(destination("localhost"), NO_POLICY, field="subject_image")
    # Allowed by CIDR, the same name resolves to the address to connect to …
    found = await resolve(
        destination("localhost"), EgressPolicy.parse("127.0.0.0/8"), field="subject_image"
    )
    assert found == ipaddress.ip_address("127.0.0.1")
    # … and by name, too; another name on the list does not admit it.
    assert await resolve(
        destination("localhost"), EgressPolicy.parse("localhost"), field="f"
    ) == ipaddress.ip_address("127.0.0.1")
    with pytest.raises(EgressRefused):
        await resolve(destination("localhost"), EgressPolicy.parse("images.internal"), field="f")
    # A name that does not resolve is a refusal worth retrying (DNS may come back).
    with pytest.raises(EgressRefused, match="does not resolve") as unknown:
        await resolve(destination("no-such-host.invalid"), NO_POLICY, field="f")
    assert unknown.value.extra["retryable"] is True


async def test_resolve_refuses_a_name_if_any_of_its_addresses_is_private(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def rebinding(host: str, port: int, **kwargs: Any) -> list[Any]:
        stream = socket.SOCK_STREAM
        return [
            (socket.AF_INET, stream, 6, "", ("8.8.8.8", port)),
            (socket.AF_INET, stream, 6, "", ("10.0.0.1", port)),
        ]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", rebinding)
    with pytest.raises(EgressRefused, match=r"10\.0\.0\.1"):
        await resolve(destination("mixed.example"), NO_POLICY, field="webhook_url")


async def test_egress_stream_connects_to_the_checked_address_with_the_original_host(
    receiver: WebhookReceiver,
) -> None:
    async with (
        httpx.AsyncClient() as http,
        egress_stream(
            http,
            "POST",
            receiver.url("/egress?x=1", host="localhost"),
            EgressPolicy.parse("localhost"),
            field="webhook_url",
            headers={"x-test": "yes"},
            content=b"payload",
            timeout_s=2,
        ) as response,
    ):
        assert response.status_code == 200
    [request] = receiver.received("/egress")
    assert request.headers["host"] == f"localhost:{receiver.port}"
    assert request.query == "x=1"
    assert request.headers["x-test"] == "yes"
    assert request.body == b"payload"


async def test_egress_stream_sends_a_bracketed_host_for_an_ipv6_literal() -> None:
    """`Host` must be `[::1]:port` (RFC 9110 §7.2, RFC 3986 §3.2.2), not `::1:port`."""
    with WebhookReceiver(bind="::1") as v6:
        async with (
            httpx.AsyncClient() as http,
            egress_stream(
                http, "GET", v6.url("/v6"), EgressPolicy.parse("::1"), field="f", timeout_s=2
            ) as response,
        ):
            assert response.status_code == 200
        [request] = v6.received("/v6")
        assert request.headers["host"] == f"[::1]:{v6.port}"


async def test_egress_stream_does_not_look_the_name_up_twice(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name exists only in our fake resolver, which answers once: had the client resolved
    it again, the request would have failed. It reaches 127.0.0.1 with the name as Host."""
    name = "hooks.customer.example"
    lookups: list[str] = []
    loop = asyncio.get_running_loop()
    real_getaddrinfo = loop.getaddrinfo

    async def fake_dns(host: str, port: int, **kwargs: Any) -> list[Any]:
        if host != name:  # addresses (the connection's own call) resolve as usual
            return await real_getaddrinfo(host, port, **kwargs)
        lookups.append(host)
        if len(lookups) > 1:
            raise socket.gaierror(socket.EAI_NONAME, "looked up twice")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(loop, "getaddrinfo", fake_dns)
    async with (
        httpx.AsyncClient() as http,
        egress_stream(
            http,
            "GET",
            receiver.url("/once", host=name),
            EgressPolicy.parse("127.0.0.1"),
            field="webhook_url",
            timeout_s=2,
        ) as response,
    ):
        assert response.status_code == 200
    assert lookups == [name]
    [request] = receiver.received("/once")
    assert request.headers["host"] == f"{name}:{receiver.port}"


async def test_egress_stream_refuses_before_connecting(receiver: WebhookReceiver) -> None:
    async with httpx.AsyncClient() as http:
        for host in REFUSED_HOSTS:
            with pytest.raises(EgressRefused):
                async with egress_stream(
                    http, "POST", receiver.url("/x", host=host), NO_POLICY, field="f", timeout_s=2
                ):
                    pass
    assert receiver.received() == []


async def test_egress_stream_does_not_follow_redirects(receiver: WebhookReceiver) -> None:
    receiver.script("/moved", [Reply(302, headers={"Location": receiver.url("/target")})])
    async with (
        httpx.AsyncClient(follow_redirects=True) as http,
        egress_stream(
            http,
            "GET",
            receiver.url("/moved"),
            EgressPolicy.parse("127.0.0.1"),
            field="f",
            timeout_s=2,
        ) as response,
    ):
        assert response.status_code == 302
    assert receiver.received("/target") == []


async def test_subject_image_redirect_to_a_private_address_is_refused(
    receiver: WebhookReceiver, image_server: ImageServer
) -> None:
    """The first hop is allowed (by name); the redirect it answers is checked again."""
    receiver.script("/image", [Reply(302, headers={"Location": image_server.url("/chelsea.png")})])
    seen = len(image_server.requests)
    async with httpx.AsyncClient() as http:
        with pytest.raises(EgressRefused, match="not a public address"):
            await fetch_image_bytes(
                http,
                receiver.url("/image", host="localhost"),
                policy=EgressPolicy.parse("localhost"),
                max_bytes=10_000_000,
                timeout_s=2,
            )
    assert len(receiver.received("/image")) == 1
    assert len(image_server.requests) == seen
