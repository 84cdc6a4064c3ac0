"""Faults on a real stack (issue 7, must show 1, 3, 4, 5): `relight-worker` processes, Postgres
and Redis, the API in process. Nothing may be lost, run twice or paid twice. Last, the sweeper
that all of it relies on must run on every tick when another deployment shares the Redis.

Each test reports its figures (jobs lost / duplicated / double charged, all 0) at the end of the
run, under "chaos figures". After each one `relight-admin credits audit` must exit 0.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relight.core.config import Settings
from relight.tenants.service import find_tenant, set_allowed_backends
from tests.chaos.conftest import (
    LEASE_S,
    SWEEP_INTERVAL_S,
    TERMINAL,
    JobFacts,
    Observer,
    PostgresAdmin,
    Report,
    WorkerProcess,
    Workers,
    forget_jobs,
    tally,
)
from tests.conftest import MakeTenant
from tests.fakes.image_server import ImageServer
from tests.fakes.segmind import Answer, SegmindStandIn, relight_client, segmind_settings
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import get_record, png_bytes, submit

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

START = 1000
# A small render (4 credits): the faults are the point, not the pixels.
SMALL: dict[str, Any] = {
    "prompt": "a cat, soft window light",
    "width": 512,
    "height": 512,
    "highres_scale": 1.0,
}
HOOK = "/hook"
# What arq logs when a worker starts a sweep ("→ sweep()", whatever the cron job is named).
SWEEP_STARTED = re.compile(r"→ (?:cron:)?sweep\S*\(\)")


# --- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture
def subject_url(image_server: ImageServer) -> str:
    return image_server.add("/chaos-subject.png", png_bytes((96, 120), (180, 140, 90)))


@pytest.fixture
def slow_subject(image_server: ImageServer) -> Iterator[str]:
    """The image server's `/slow` path (answers after `image_server.slow_s`), restored after."""
    delay, before = image_server.slow_s, image_server.files.get("/slow")
    image_server.files["/slow"] = (png_bytes((96, 120), (90, 140, 180)), "image/png")
    try:
        yield image_server.url("/slow")
    finally:
        image_server.slow_s = delay
        if before is None:
            image_server.files.pop("/slow", None)
        else:
            image_server.files["/slow"] = before


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


def completed_webhooks(receiver: WebhookReceiver, path: str = HOOK) -> dict[uuid.UUID, int]:
    """How many `completed` webhooks the receiver got, per request id."""
    counts: Counter[uuid.UUID] = Counter()
    for request in receiver.received(path):
        body = json.loads(request.body)
        if body["event"] == "completed":
            counts[uuid.UUID(body["request_id"])] += 1
    return dict(counts)


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        await asyncio.sleep(0.02)


def sweeps_started(worker: WorkerProcess) -> int:
    return len(SWEEP_STARTED.findall(worker.log_text()))


async def assert_balance(
    observer: Observer, tenant_id: uuid.UUID, facts: list[JobFacts], start: int = START
) -> int:
    """Balance == ledger sum == what was granted less what the (finished) jobs cost."""
    balance, ledger = await observer.balance_and_ledger(tenant_id)
    mine = [f for f in facts if f.tenant_id == tenant_id]
    assert all(f.status in TERMINAL for f in mine)
    expected = start - sum(f.credits_charged for f in mine)
    assert (balance, ledger) == (expected, expected), (balance, ledger, expected)
    return balance


# --- 1. SIGKILL a worker mid-job ----------------------------------------------------------------


async def test_sigkilled_worker_job_completes_once_after_its_lease(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    image_server: ImageServer,
    slow_subject: str,
    receiver: WebhookReceiver,
    workers: Workers,
    observer: Observer,
    report: Report,
) -> None:
    tenant = await make_tenant("chaos-sigkill", credits=START)
    image_server.slow_s = 4.0  # holds the job in its fetch phase
    request_id = await submit(
        client,
        tenant,
        {**SMALL, "subject_image": slow_subject, "webhook_url": receiver.url(HOOK)},
    )
    fetches = image_server.requests.count("/slow")

    first = workers.start("worker-1")
    await observer.wait_for([request_id], lambda f: f.status == "running", describe=workers.logs)
    await wait_until(
        lambda: image_server.requests.count("/slow") > fetches, 10, "worker-1 fetching"
    )
    await first.sigkill()
    killed_at = time.monotonic()
    assert await observer.status(request_id) == ("running", 1)

    image_server.slow_s = 0.2  # the second attempt fetches again, quickly
    workers.start("worker-2")
    # The lease (3 s) expires, a sweep (every 1 s) takes the job back, worker-2 runs it.
    [facts] = await observer.wait_for([request_id], timeout_s=LEASE_S + 12, describe=workers.logs)
    recovered_s = time.monotonic() - killed_at
    await receiver.wait_for(HOOK, 1, timeout_s=10)
    await asyncio.sleep(2 * SWEEP_INTERVAL_S + 0.5)  # room for a sweep to send it twice
    hooks = completed_webhooks(receiver)
    record = await get_record(client, tenant, request_id)
    figures = tally([facts], expected_status="succeeded", webhooks=hooks, max_attempts=2)
    report(
        figures.line(
            completed_webhooks=hooks.get(facts.id, 0),
            outputs=facts.outputs,
            recovered_after_kill_s=round(recovered_s, 1),
        )
    )

    assert (figures.lost, figures.duplicated, figures.double_charged) == ([], [], [])
    assert record["status"] == "COMPLETED"
    assert facts.attempts == 2  # the killed attempt, then the one that finished
    assert (facts.reserves, facts.charges, facts.refunds) == (1, 1, 0)
    assert facts.outputs == 1
    assert len(record["outputs"]) == 1
    assert hooks == {facts.id: 1}
    await assert_balance(observer, tenant.tenant_id, [facts])


# --- 3. Redis forgets the queue -----------------------------------------------------------------


async def test_jobs_redis_forgot_all_complete_once_after_a_sweep(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    subject_url: str,
    redis: ArqRedis,
    settings: Settings,
    workers: Workers,
    observer: Observer,
    report: Report,
) -> None:
    tenant = await make_tenant("chaos-redis", credits=START)
    ids = [await submit(client, tenant, {**SMALL, "subject_image": subject_url}) for _ in range(20)]
    assert await redis.zcard(settings.queue_name) == 20

    deleted = await forget_jobs(redis, settings, ids)
    assert await redis.zcard(settings.queue_name) == 0
    assert await redis.exists(*(job_key_prefix + i for i in ids)) == 0

    worker = workers.start()
    started = time.monotonic()
    # Only a sweep can queue them again, so their completing at all is the sweep's doing; how
    # soon is a figure for the report, not an assertion a loaded machine could fail.
    facts = await observer.wait_for(
        ids, lambda f: f.status == "succeeded", timeout_s=60, describe=workers.logs
    )
    elapsed_s = time.monotonic() - started
    await worker.wait_ready()
    requeued = sum(int(n) for n in re.findall(r"sweep: \{'requeued': (\d+)", workers.text()))
    figures = tally(facts, expected_status="succeeded", max_attempts=1)
    report(
        figures.line(
            redis_keys_deleted=deleted,
            requeued_by_sweeps=requeued,
            outputs=sum(f.outputs for f in facts),
            all_done_after_worker_start_s=round(elapsed_s, 1),
        )
    )

    assert (figures.lost, figures.duplicated, figures.double_charged) == ([], [], [])
    assert figures.unsettled == []
    assert all(f.attempts == 1 for f in facts)  # none ran twice
    assert all((f.reserves, f.charges, f.refunds) == (1, 1, 0) for f in facts)
    assert all(f.outputs == 1 for f in facts)
    await assert_balance(observer, tenant.tenant_id, facts)


# --- 4. Postgres connections killed mid-run -----------------------------------------------------


async def test_killed_postgres_connections_mid_batch_no_job_lost_or_charged_twice(
    client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    image_server: ImageServer,
    slow_subject: str,
    workers: Workers,
    observer: Observer,
    postgres_admin: PostgresAdmin,
    report: Report,
) -> None:
    tenant = await make_tenant("chaos-postgres", credits=START)
    # Each job fetches for 1 s and renders 3 images: the batch (4 at a time) runs for ~3.5 s.
    image_server.slow_s = 1.0
    body = {**SMALL, "subject_image": slow_subject, "number_of_images": 3}
    ids = [await submit(client, tenant, body) for _ in range(10)]

    workers.start()
    await observer.wait_for(ids[:1], lambda f: f.status != "queued", describe=workers.logs)
    killed = 0
    rounds = 0
    fault_ends = time.monotonic() + 2.0
    while time.monotonic() < fault_ends:
        killed += await postgres_admin.terminate_connections()
        rounds += 1
        await asyncio.sleep(0.1)
    at_fault_end = Counter(f.status for f in await observer.facts(ids))

    facts = await observer.wait_for(
        ids, lambda f: f.status == "succeeded", timeout_s=LEASE_S + 17, describe=workers.logs
    )
    figures = tally(facts, expected_status="succeeded", max_attempts=3)
    report(
        figures.line(
            kill_rounds=rounds,
            connections_killed=killed,
            statuses_when_fault_ended=dict(at_fault_end),
            run_job_errors=workers.count("run_job failed"),
            worker_saw_terminations=workers.count("terminating connection due to administrator"),
            sweep_errors=workers.count("sweep failed"),
            outputs=sum(f.outputs for f in facts),
        )
    )

    assert killed > 0, "the fault never hit a connection"
    assert (figures.lost, figures.duplicated, figures.double_charged) == ([], [], [])
    assert figures.unsettled == []
    assert all((f.reserves, f.charges, f.refunds) == (1, 1, 0) for f in facts)
    assert all(f.outputs == 3 for f in facts)
    await assert_balance(observer, tenant.tenant_id, facts)


# --- 5. A poison job ----------------------------------------------------------------------------


async def test_poison_job_fails_after_its_attempts_refunded_once_without_blocking_others(
    settings: Settings,
    make_tenant: MakeTenant,
    sessionmaker: async_sessionmaker[AsyncSession],
    subject_url: str,
    receiver: WebhookReceiver,
    workers: Workers,
    observer: Observer,
    report: Report,
) -> None:
    poisoned = await make_tenant("chaos-poisoned", credits=START)
    bystander = await make_tenant("chaos-bystander", credits=START)
    async with sessionmaker() as session, session.begin():
        await set_allowed_backends(session, await find_tenant(session, poisoned.name), ["segmind"])

    with SegmindStandIn() as segmind:
        # Every answer is a 200 whose bytes are no image: a transient failure, every time.
        segmind.always(Answer.garbage())
        worker = workers.start(
            RELIGHT_SEGMIND_API_KEY=segmind.api_key,
            RELIGHT_SEGMIND_BASE_URL=segmind.url,
            RELIGHT_SEGMIND_TIMEOUT_S="2",
        )
        await worker.wait_ready()
        async with relight_client(segmind_settings(settings, segmind)) as client:
            poison = await submit(
                client,
                poisoned,
                {
                    **SMALL,
                    "subject_image": subject_url,
                    "backend": "segmind",
                    "webhook_url": receiver.url(HOOK),
                },
            )
            submitted_at = time.monotonic()
            others = [
                await submit(
                    client, bystander, {**SMALL, "subject_image": subject_url, "backend": "local"}
                )
                for _ in range(5)
            ]
            bystanders = await observer.wait_for(
                others, lambda f: f.status in TERMINAL, timeout_s=15, describe=workers.logs
            )
            bystanders_done_s = time.monotonic() - submitted_at
            poison_then = await observer.status(poison)
            [poison_facts] = await observer.wait_for([poison], timeout_s=15, describe=workers.logs)
            record = await get_record(client, poisoned, poison)
        await receiver.wait_for(HOOK, 1, timeout_s=10)
        await asyncio.sleep(SWEEP_INTERVAL_S + 0.5)  # room for a sweep to send it twice
        upstream_calls = len(segmind.calls())

    hooks = completed_webhooks(receiver)
    poison_figures = tally(
        [poison_facts],
        expected_status="failed",
        webhooks=hooks,
        max_attempts=settings.job_max_attempts,
    )
    bystander_figures = tally(bystanders, expected_status="succeeded", max_attempts=1)
    report(
        "poison "
        + poison_figures.line(
            status=poison_facts.status,
            error=poison_facts.error_code,
            upstream_calls=upstream_calls,
            completed_webhooks=hooks.get(poison_facts.id, 0),
        )
    )
    report(
        "bystanders "
        + bystander_figures.line(
            all_done_after_submit_s=round(bystanders_done_s, 1),
            poison_then=poison_then,
        )
    )

    for figures in (poison_figures, bystander_figures):
        assert (figures.lost, figures.duplicated, figures.double_charged) == ([], [], [])
        assert figures.unsettled == []
    assert record["status"] == "FAILED"
    assert poison_facts.attempts == settings.job_max_attempts
    assert poison_facts.error_code == "upstream_unavailable"
    assert (poison_facts.reserves, poison_facts.charges, poison_facts.refunds) == (1, 0, 1)
    assert poison_facts.outputs == 0
    assert upstream_calls == settings.job_max_attempts  # one call per attempt, no more
    assert hooks == {poison_facts.id: 1}
    assert all(f.attempts == 1 and f.outputs == 1 for f in bystanders)
    assert await assert_balance(observer, poisoned.tenant_id, [poison_facts]) == START
    await assert_balance(observer, bystander.tenant_id, bystanders)


# --- the sweeper on a Redis shared with a neighbour ---------------------------------------------


async def test_a_neighbour_queue_on_the_same_redis_does_not_take_our_sweeps(
    settings: Settings, clean_state: None, workers: Workers, report: Report
) -> None:
    """Two deployments (queues) on one Redis database must each sweep on every tick: the
    sweeper is what recovers their lost jobs (must show 1 and 3)."""
    neighbour = workers.start("neighbour", RELIGHT_QUEUE_NAME=settings.queue_name + ":neighbour")
    ours = workers.start("ours")
    await neighbour.wait_ready()
    await ours.wait_ready()
    await asyncio.sleep(1.5)  # past the startup sweeps
    before = {w.name: sweeps_started(w) for w in (ours, neighbour)}
    window_s = 4.0
    await asyncio.sleep(window_s)
    swept = {w.name: sweeps_started(w) - before[w.name] for w in (ours, neighbour)}
    ticks = int(window_s / SWEEP_INTERVAL_S)
    report(f"ticks={ticks} sweeps={swept}")

    # One tick may fall either side of the window's edges.
    assert swept["ours"] >= ticks - 1, swept
    assert swept["neighbour"] >= ticks - 1, swept
