"""Choosing a backend and failing over: `relight.backends.routing` on its own, then `auto` jobs
run by the real worker with the segmind backend pointed at the stand-in (tests/fakes/segmind.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from relight.backends import routing
from relight.backends.attempts import Attempt, BackendCall, read_attempts
from relight.backends.render_backend import BackendResult, JobInput, ProgressCallback
from relight.core.config import Settings
from relight.core.errors import BackendFailed
from relight.core.params import Backend, RelightParams
from relight.tenants.service import find_tenant, set_allowed_backends
from tests.conftest import MakeTenant, TenantKey, example_base64
from tests.fakes.segmind import (
    Answer,
    SegmindStandIn,
    relight_client,
    run_burst_worker,
    segmind_settings,
)
from tests.helpers import balance_of, get_record

START = 1000
MAX = 3  # settings.job_max_attempts in tests/conftest.py
GPU, SEGMIND, LOCAL, AUTO = (
    Backend.GPU,
    Backend.SEGMIND,
    Backend.LOCAL,
    Backend.AUTO,
)
ORDER = ["gpu", "segmind", "local"]
ALL = ["gpu", "segmind", "local"]


# --- routing, on its own ----------------------------------------------------------------------


def failed(
    code: str, *, retryable: bool, failover: bool = False, retry_after_s: float | None = None
) -> BackendFailed:
    return BackendFailed(
        "it failed", code=code, retryable=retryable, failover=failover, retry_after_s=retry_after_s
    )


def entry(attempt: int, backend: Backend, error: BackendFailed | None = None) -> Attempt:
    return Attempt.record(attempt, backend, error, [])


@pytest.mark.parametrize(
    ("requested", "allowed", "available", "expected"),
    [
        pytest.param("auto", ALL, {"gpu", "segmind", "local"}, ORDER, id="auto-all"),
        pytest.param("auto", ALL, {"segmind", "local"}, ["segmind", "local"], id="auto-no-gpu"),
        pytest.param(
            "auto",
            ["local", "segmind"],
            {"segmind", "local"},
            ["segmind", "local"],
            id="auto-keeps-the-settings-order",
        ),
        pytest.param("auto", ["segmind"], {"segmind", "local"}, ["segmind"], id="auto-allowed"),
        pytest.param("auto", ["gpu"], {"segmind", "local"}, [], id="auto-nothing-usable"),
        pytest.param("segmind", ALL, {"segmind", "local"}, ["segmind"], id="explicit"),
        pytest.param("segmind", ["local"], {"segmind", "local"}, [], id="explicit-not-allowed"),
        pytest.param("segmind", ALL, {"local"}, [], id="explicit-not-configured"),
        pytest.param("local", ["local"], {"segmind", "local"}, ["local"], id="explicit-local"),
    ],
)
def test_candidates(
    requested: str, allowed: list[str], available: set[str], expected: list[str]
) -> None:
    names = {Backend(name) for name in available}
    assert routing.candidates(Backend(requested), allowed, ORDER, names) == expected


def test_candidates_follow_the_configured_order() -> None:
    assert routing.candidates(AUTO, ALL, ["local", "segmind"], {SEGMIND, LOCAL}) == [
        "local",
        "segmind",
    ]
    # A backend missing from the failover order is never chosen by `auto`.
    assert routing.candidates(AUTO, ALL, ["segmind"], {SEGMIND, LOCAL}) == ["segmind"]


def test_candidates_are_backend_names() -> None:
    """The settings and the tenant's row hold plain strings; routing answers with the enum."""
    assert all(type(name) is Backend for name in routing.candidates(AUTO, ALL, ORDER, {GPU, LOCAL}))


def test_attempt_entry_records_the_outcome() -> None:
    assert entry(1, LOCAL).to_json() == {
        "attempt": 1,
        "backend": "local",
        "calls": [],
        "outcome": "ok",
    }
    error = failed("upstream_auth", retryable=False, failover=True)
    assert entry(2, SEGMIND, error).to_json() == {
        "attempt": 2,
        "backend": "segmind",
        "calls": [],
        "outcome": "failed",
        "code": "upstream_auth",
        "retryable": False,
        "failover": True,
    }


def test_the_attempt_log_reads_back_what_it_stored() -> None:
    call = BackendCall(
        backend=SEGMIND,
        started_at="2026-11-27T08:00:00+00:00",
        latency_ms=12.5,
        outcome="error",
        status_code=500,
        remaining_credits=9.5,
    )
    stored = [
        Attempt.record(1, SEGMIND, failed("upstream_error", retryable=True), [call]).to_json(),
        Attempt.record(2, LOCAL, None, []).to_json(),
    ]
    assert stored[0]["calls"] == [
        {
            "backend": "segmind",
            "started_at": "2026-11-27T08:00:00+00:00",
            "latency_ms": 12.5,
            "outcome": "error",
            "status_code": 500,
            "remaining_credits": 9.5,
        }
    ]
    log = read_attempts(stored)
    assert log[0].calls == (call,)
    assert [attempt.to_json() for attempt in log] == stored
    with pytest.raises(ValueError, match="outcome"):
        Attempt.from_json({"attempt": 1, "backend": "local", "outcome": "maybe"})


def test_a_backend_is_exhausted_after_max_tries_or_one_permanent_failure() -> None:
    transient = failed("upstream_error", retryable=True)
    log = [entry(1, SEGMIND, transient), entry(2, SEGMIND, transient)]
    assert not routing.is_exhausted(SEGMIND, log, 3)
    assert routing.is_exhausted(SEGMIND, log, 2)
    assert routing.tries_on(SEGMIND, log) == 2
    assert routing.tries_on(LOCAL, log) == 0
    assert not routing.is_exhausted(LOCAL, log, 1)  # other backends' tries do not count
    for permanent in (
        failed("upstream_auth", retryable=False, failover=True),
        failed("upstream_rejected", retryable=False),
    ):
        assert routing.is_exhausted(SEGMIND, [entry(1, SEGMIND, permanent)], 3)
    assert routing.is_exhausted(SEGMIND, [], 0)


def test_choose_takes_the_first_candidate_not_exhausted() -> None:
    transient = failed("upstream_error", retryable=True)
    auth = failed("upstream_auth", retryable=False, failover=True)
    choices = [SEGMIND, LOCAL]
    assert routing.choose(choices, [], 3) == "segmind"
    assert routing.choose(choices, [entry(1, SEGMIND, transient)], 3) == "segmind"
    spent = [entry(n, SEGMIND, transient) for n in (1, 2, 3)]
    assert routing.choose(choices, spent, 3) == "local"
    assert routing.choose(choices, [entry(1, SEGMIND, auth)], 3) == "local"
    assert (
        routing.choose(choices, [*spent, *(entry(n, LOCAL, transient) for n in (4, 5, 6))], 3)
        is None
    )
    assert routing.choose([SEGMIND], spent, 3) is None
    assert routing.choose([], [], 3) is None


@pytest.mark.parametrize(
    ("backend", "error", "code"),
    [
        pytest.param(
            SEGMIND,
            failed("upstream_error", retryable=True),
            "upstream_unavailable",
            id="segmind-transient",
        ),
        pytest.param(
            SEGMIND,
            failed("upstream_timeout", retryable=True),
            "upstream_unavailable",
            id="segmind-timeout",
        ),
        pytest.param(
            GPU, failed("node_error", retryable=True), "upstream_unavailable", id="gpu-transient"
        ),
        pytest.param(
            SEGMIND,
            failed("upstream_auth", retryable=False, failover=True),
            "upstream_auth",
            id="segmind-auth",
        ),
        pytest.param(
            SEGMIND,
            failed("upstream_credits", retryable=False, failover=True),
            "upstream_credits",
            id="segmind-credits",
        ),
        pytest.param(
            SEGMIND,
            failed("upstream_rejected", retryable=False),
            "upstream_rejected",
            id="segmind-rejected",
        ),
        pytest.param(
            LOCAL,
            failed("internal_error", retryable=True),
            "internal_error",
            id="local-keeps-its-code",
        ),
    ],
)
def test_final_code(backend: Backend, error: BackendFailed, code: str) -> None:
    assert routing.final_code(backend, error) == code


def decide(
    error: BackendFailed, log: list[Attempt], choices: list[Backend], attempts: int = 1
) -> routing.NextStep:
    return routing.after_failure(
        error,
        attempts=attempts,
        failed=log[-1] if log else None,
        choices=choices,
        log=log,
        max_tries=MAX,
        backoff_s=2.0,
    )


def test_a_transient_failure_is_retried_on_the_same_backend_with_a_growing_backoff() -> None:
    transient = failed("upstream_error", retryable=True)
    first = decide(transient, [entry(1, SEGMIND, transient)], [SEGMIND, LOCAL])
    assert first.retry
    assert first.code == "upstream_error"
    assert 1.8 <= first.delay_s <= 2.2
    log = [entry(1, SEGMIND, transient), entry(2, SEGMIND, transient)]
    second = decide(transient, log, [SEGMIND, LOCAL], attempts=2)
    assert second.retry
    assert 3.6 <= second.delay_s <= 4.4


def test_the_upstreams_retry_after_is_honoured_within_reason() -> None:
    slow_down = failed("upstream_rate_limited", retryable=True, retry_after_s=30)
    assert decide(slow_down, [entry(1, SEGMIND, slow_down)], [SEGMIND]).delay_s == 30
    forever = failed("upstream_rate_limited", retryable=True, retry_after_s=86_400)
    step = decide(forever, [entry(1, SEGMIND, forever)], [SEGMIND])
    assert step.delay_s == routing.MAX_RETRY_AFTER_S


def test_a_spent_backend_fails_over_at_once_and_the_last_one_ends_the_job() -> None:
    transient = failed("upstream_error", retryable=True)
    spent = [entry(n, SEGMIND, transient) for n in (1, 2, 3)]
    over = decide(transient, spent, [SEGMIND, LOCAL], attempts=3)
    assert (over.retry, over.delay_s, over.code) == (True, 0.0, "upstream_error")
    last = decide(transient, spent, [SEGMIND], attempts=3)
    assert (last.retry, last.code) == (False, "upstream_unavailable")


def test_a_rejected_request_is_not_tried_elsewhere() -> None:
    rejected = failed("upstream_rejected", retryable=False)
    step = decide(rejected, [entry(1, SEGMIND, rejected)], [SEGMIND, LOCAL])
    assert (step.retry, step.code) == (False, "upstream_rejected")


def test_a_failure_before_any_backend_is_retried_while_tries_are_left() -> None:
    fetch = failed("input_fetch_failed", retryable=True)
    assert decide(fetch, [], [], attempts=1).retry
    assert not decide(fetch, [], [], attempts=MAX).retry
    refused = failed("backend_unavailable", retryable=False)
    assert not decide(refused, [], [], attempts=1).retry


# --- auto jobs through the worker -------------------------------------------------------------


@pytest.fixture
def stand_in() -> Iterator[SegmindStandIn]:
    with SegmindStandIn() as server:
        yield server


@pytest.fixture
def segmind(settings: Settings, stand_in: SegmindStandIn) -> Settings:
    """Segmind at the stand-in; the default failover order gpu,segmind,local; no GPU nodes."""
    configured = segmind_settings(settings, stand_in, backend_failover_order="gpu,segmind,local")
    assert configured.local_backend_enabled
    return configured


@pytest.fixture
async def sclient(segmind: Settings, clean_state: None) -> AsyncIterator[httpx.AsyncClient]:
    async with relight_client(segmind) as client:
        yield client


# A small render, where the size does not matter.
def auto_body(**overrides: Any) -> dict[str, Any]:
    return {
        "prompt": "cat, photoshoot, 4k",
        "subject_image": example_base64(),
        "seed": 42,
        "width": 256,
        "height": 320,
        "highres_scale": 1.0,
        **overrides,
    }


async def tenant_allowed(
    make_tenant: MakeTenant, sessionmaker: async_sessionmaker[AsyncSession], backends: list[str]
) -> TenantKey:
    tenant = await make_tenant()
    async with sessionmaker() as session, session.begin():
        await set_allowed_backends(session, await find_tenant(session, tenant.name), backends)
    return tenant


async def submit(client: httpx.AsyncClient, tenant: TenantKey, payload: dict[str, Any]) -> str:
    response = await client.post("/v2/ic-light", headers=tenant.headers, json=payload)
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id


async def ledger_kinds(engine: AsyncEngine, request_id: str) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("select kind from credit_entry where job_id = :id order by id"),
            {"id": uuid.UUID(request_id)},
        )
        return [str(kind) for (kind,) in rows]


def tried(record: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """Per attempt: (backend, outcome, error code)."""
    return [
        (attempt["backend"], attempt["outcome"], attempt.get("code"))
        for attempt in record["backend"]["attempts"]
    ]


async def test_auto_fails_over_from_a_failing_segmind_to_local(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    sessionmaker: async_sessionmaker[AsyncSession],
    stand_in: SegmindStandIn,
    segmind: Settings,
    engine: AsyncEngine,
) -> None:
    stand_in.always(Answer.error(500))
    tenant = await tenant_allowed(make_tenant, sessionmaker, ["segmind", "local"])
    request_id = await submit(sclient, tenant, auto_body())

    await run_burst_worker(segmind)

    record = await get_record(sclient, tenant, request_id)
    assert record["status"] == "COMPLETED", record["error"]
    assert record["backend"]["requested"] == "auto"
    assert record["backend"]["used"] == "local"
    assert record["attempts"] == MAX + 1
    assert tried(record) == [("segmind", "failed", "upstream_error")] * MAX + [
        ("local", "ok", None)
    ]
    assert [call.status for call in stand_in.calls()] == [500] * MAX
    assert len(record["outputs"]) == 1
    reserved = record["credits"]["reserved"]
    assert record["credits"] == {"reserved": reserved, "charged": reserved}
    assert await ledger_kinds(engine, request_id) == ["reserve", "charge"]
    assert await balance_of(engine, tenant.tenant_id) == START - reserved


async def test_auto_without_local_allowed_fails_upstream_unavailable_and_refunds(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    sessionmaker: async_sessionmaker[AsyncSession],
    stand_in: SegmindStandIn,
    segmind: Settings,
    engine: AsyncEngine,
) -> None:
    stand_in.always(Answer.error(500))
    tenant = await tenant_allowed(make_tenant, sessionmaker, ["segmind"])
    request_id = await submit(sclient, tenant, auto_body())

    await run_burst_worker(segmind)

    record = await get_record(sclient, tenant, request_id)
    assert record["status"] == "FAILED"
    assert record["error_code"] == "upstream_unavailable"
    assert record["attempts"] == MAX
    assert record["backend"]["used"] is None
    assert tried(record) == [("segmind", "failed", "upstream_error")] * MAX
    assert len(stand_in.calls()) == MAX
    assert record["credits"]["charged"] == 0
    assert await ledger_kinds(engine, request_id) == ["reserve", "refund"]
    assert await balance_of(engine, tenant.tenant_id) == START


@pytest.mark.parametrize(
    ("status", "code"), [(401, "upstream_auth"), (406, "upstream_credits")], ids=["401", "406"]
)
async def test_auto_fails_over_at_once_when_segmind_refuses_the_account(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    stand_in: SegmindStandIn,
    segmind: Settings,
    engine: AsyncEngine,
    status: int,
    code: str,
) -> None:
    stand_in.always(Answer.error(status))
    tenant = await make_tenant()  # allowed: gpu, segmind, local (the default)
    request_id = await submit(sclient, tenant, auto_body())

    await run_burst_worker(segmind)

    record = await get_record(sclient, tenant, request_id)
    assert record["status"] == "COMPLETED", record["error"]
    assert record["backend"]["used"] == "local"
    assert record["attempts"] == 2
    assert tried(record) == [("segmind", "failed", code), ("local", "ok", None)]
    assert [call.status for call in stand_in.calls()] == [status]
    assert await ledger_kinds(engine, request_id) == ["reserve", "charge"]


async def test_auto_does_not_fail_over_when_segmind_rejects_the_request(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    stand_in: SegmindStandIn,
    segmind: Settings,
    engine: AsyncEngine,
) -> None:
    """A 422 says the request itself is wrong: another backend would not make it right."""
    stand_in.always(Answer.error(422, "prompt: too long"))
    tenant = await make_tenant()
    request_id = await submit(sclient, tenant, auto_body())

    await run_burst_worker(segmind)

    record = await get_record(sclient, tenant, request_id)
    assert record["status"] == "FAILED"
    assert record["error_code"] == "upstream_rejected"
    assert record["attempts"] == 1
    assert tried(record) == [("segmind", "failed", "upstream_rejected")]
    assert await ledger_kinds(engine, request_id) == ["reserve", "refund"]
    assert await balance_of(engine, tenant.tenant_id) == START


async def test_auto_prefers_segmind_and_skips_what_the_tenant_may_not_use(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    sessionmaker: async_sessionmaker[AsyncSession],
    stand_in: SegmindStandIn,
    segmind: Settings,
) -> None:
    everything = await make_tenant()
    local_only = await tenant_allowed(make_tenant, sessionmaker, ["local"])
    on_segmind = await submit(sclient, everything, auto_body())
    on_local = await submit(sclient, local_only, auto_body())

    await run_burst_worker(segmind)

    first = await get_record(sclient, everything, on_segmind)
    second = await get_record(sclient, local_only, on_local)
    assert (first["status"], first["backend"]["used"]) == ("COMPLETED", "segmind")
    assert (second["status"], second["backend"]["used"]) == ("COMPLETED", "local")
    assert len(stand_in.calls()) == 1


async def test_auto_with_no_usable_backend_is_refused_at_submit(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    sessionmaker: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
) -> None:
    tenant = await tenant_allowed(make_tenant, sessionmaker, ["gpu"])
    response = await sclient.post("/v2/ic-light", headers=tenant.headers, json=auto_body())
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "backend_unavailable"
    assert await balance_of(engine, tenant.tenant_id) == START


class BrokenLocalBackend:
    """A `local` backend whose engine fails transiently every time (say, out of memory)."""

    name = Backend.LOCAL

    def __init__(self, *args: object) -> None:
        del args

    async def render(
        self,
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        calls: list[BackendCall],
        progress: ProgressCallback | None = None,
    ) -> BackendResult:
        raise BackendFailed("the engine ran out of memory", code="engine_error", retryable=True)


async def test_when_every_backend_fails_transiently_the_job_ends_failed_and_refunded(
    sclient: httpx.AsyncClient,
    make_tenant: MakeTenant,
    stand_in: SegmindStandIn,
    segmind: Settings,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each backend gets job_max_attempts tries, so a job may run up to that many times per
    candidate backend; it must still end (failed, refunded), never stay queued."""
    monkeypatch.setattr("worker.settings.LocalBackend", BrokenLocalBackend)
    stand_in.always(Answer.error(500))
    tenant = await make_tenant()
    request_id = await submit(sclient, tenant, auto_body())

    await run_burst_worker(segmind)

    record = await get_record(sclient, tenant, request_id)
    assert len(stand_in.calls()) == MAX
    assert tried(record)[:MAX] == [("segmind", "failed", "upstream_error")] * MAX
    assert record["status"] == "FAILED", (
        f"the job is {record['status']} after {record['attempts']} attempts: {tried(record)}"
    )
    assert record["attempts"] == 2 * MAX
    assert tried(record)[MAX:] == [("local", "failed", "engine_error")] * MAX
    assert record["error_code"] == "engine_error"
    assert await ledger_kinds(engine, request_id) == ["reserve", "refund"]
    assert await balance_of(engine, tenant.tenant_id) == START
