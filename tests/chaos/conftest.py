"""The chaos suite's machinery: real `relight-worker` processes, faults, and the bookkeeping.

- `workers` starts `relight-worker` processes (RELIGHT_* env from the test settings, with short
  leases and sweeps) and stops whatever is left of them after the test.
- `observer` reads the test database over a connection of its own, which the Postgres fault
  spares (its `application_name` is `OBSERVER_APP`), and counts what the faults must not break:
  per job its status, attempts, outputs and ledger entries (`JobFacts`), per tenant its balance
  against its ledger.
- `forget_jobs` makes Redis forget jobs: this run's queue key and the jobs' arq keys only (the
  Redis database is shared with other runs; it is never flushed).
- After every test, `relight-admin credits audit` must exit 0, and this run's arq keys go.
- Every fault test reports its figures (`report`); they are printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix

from relight.core.config import Settings
from scripts.stack import BIN
from tests.conftest import PG_SERVER, TEST_DATABASE

# Chaos settings for the worker processes: short leases and sweeps, so faults heal in seconds.
LEASE_S = 3.0
REQUEUE_GRACE_S = 1.0
SWEEP_INTERVAL_S = 1
RETRY_BACKOFF_S = 0.2
# Sent by connections that a Postgres fault must spare: the test's own eyes.
OBSERVER_APP = "relight-chaos-observer"
READY_LINE = "worker ready on queue"
ARQ_PREFIX = "arq:"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: fault injection on real processes, Postgres and Redis (tests/chaos)"
    )


# --- figures ------------------------------------------------------------------------------------

FIGURES = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("chaos figures")
        for line in lines:
            terminalreporter.write_line(line)


Report = Callable[[str], None]


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """Record one line of figures for the run's summary (under the test's name)."""

    def add(line: str) -> None:
        request.config.stash.setdefault(FIGURES, []).append(f"{request.node.name}: {line}")

    return add


# --- worker processes ---------------------------------------------------------------------------


def worker_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `relight-worker` for the test settings, with chaos timings: the
    database, Redis, queue and storage of the in-process API, so the two meet."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RELIGHT_")}
    return {
        **inherited,
        "RELIGHT_ENVIRONMENT": "test",
        "RELIGHT_DATABASE_URL": settings.database_url,
        "RELIGHT_REDIS_URL": settings.redis_url,
        "RELIGHT_QUEUE_NAME": settings.queue_name,
        "RELIGHT_STORAGE_DIR": str(settings.storage_dir),
        "RELIGHT_SECRET_KEY": settings.secret_key,
        "RELIGHT_EGRESS_ALLOWLIST": "127.0.0.1",
        "RELIGHT_WORKER_POLL_DELAY_S": "0.01",
        "RELIGHT_LEASE_S": str(LEASE_S),
        "RELIGHT_SHUTDOWN_GRACE_S": "1",
        "RELIGHT_REQUEUE_GRACE_S": str(REQUEUE_GRACE_S),
        "RELIGHT_WEBHOOK_SWEEP_INTERVAL_S": str(SWEEP_INTERVAL_S),
        "RELIGHT_RETRY_BACKOFF_S": str(RETRY_BACKOFF_S),
        "RELIGHT_JOB_MAX_ATTEMPTS": str(settings.job_max_attempts),
        "RELIGHT_WEBHOOK_RETRY_SCHEDULE": settings.webhook_retry_schedule,
        "RELIGHT_WEBHOOK_TIMEOUT_S": str(settings.webhook_timeout_s),
        "RELIGHT_MAX_INPUT_BYTES": str(settings.max_input_bytes),
        "RELIGHT_MAX_INPUT_PIXELS": str(settings.max_input_pixels),
        # Long enough for the image server's /slow answer that holds a job in its fetch phase.
        "RELIGHT_FETCH_TIMEOUT_S": "15",
        "RELIGHT_LOCAL_ENGINE_THREADS": str(settings.local_engine_threads),
        "RELIGHT_LOG_LEVEL": "INFO",
        **extra,
    }


@dataclass
class WorkerProcess:
    """One `relight-worker` process and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def is_running(self) -> bool:
        return self.process.poll() is None

    async def wait_ready(self, timeout_s: float = 20.0) -> None:
        """Until the worker logged that its startup (database, backends) is done."""
        deadline = time.monotonic() + timeout_s
        while READY_LINE not in self.log_text():
            if not self.is_running():
                raise AssertionError(f"{self.name} exited early:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.05)

    async def sigkill(self) -> None:
        """SIGKILL: no shutdown hook runs, nothing is handed back; the process is gone."""
        self.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.process.wait, 10)

    async def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM (the worker hands its jobs back), SIGKILL if it outlives `grace_s`."""
        if self.is_running():
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait, 10)
        self.log.close()


class Workers:
    """Starts `relight-worker` processes; `stop_all` ends what is left of them."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.started: list[WorkerProcess] = []

    def start(self, name: str | None = None, **extra_env: str) -> WorkerProcess:
        name = name or f"worker-{len(self.started) + 1}"
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("wb")
        try:
            process = subprocess.Popen(
                [str(BIN / "relight-worker")],
                env=worker_environment(self.settings, **extra_env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            log.close()
            raise
        worker = WorkerProcess(name=name, process=process, log_path=log_path, log=log)
        self.started.append(worker)
        return worker

    def logs(self) -> str:
        """Every worker's log, for assertion messages (the last lines of each)."""
        return "\n".join(
            f"--- {worker.name} ---\n{worker.log_text()[-4000:]}" for worker in self.started
        )

    def text(self) -> str:
        """Every worker's whole log."""
        return "\n".join(worker.log_text() for worker in self.started)

    def count(self, text: str) -> int:
        """How many times `text` appears in the workers' logs."""
        return self.text().count(text)

    async def stop_all(self) -> None:
        for worker in self.started:
            if not worker.log.closed:
                await worker.stop()


@pytest.fixture
async def workers(settings: Settings, migrated: None, tmp_path: Path) -> AsyncIterator[Workers]:
    pool = Workers(settings, tmp_path)
    try:
        yield pool
    finally:
        await pool.stop_all()


# --- reading the database -----------------------------------------------------------------------


@dataclass(frozen=True)
class JobFacts:
    """What the database holds about one job, with its ledger entries counted by kind."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    status: str
    attempts: int
    error_code: str | None
    images: int
    outputs: int
    credits_reserved: int
    credits_charged: int
    reserves: int
    charges: int
    refunds: int

    @property
    def settled_once(self) -> bool:
        """One reservation and exactly one charge or refund: paid (or given back) once."""
        return self.reserves == 1 and self.charges + self.refunds == 1

    @property
    def double_charged(self) -> bool:
        """Reserved twice, or settled twice (two charges, two refunds, or one of each)."""
        return self.reserves > 1 or self.charges + self.refunds > 1


JOB_FACTS = """
SELECT j.id, j.tenant_id, j.status, j.attempts, j.error_code, j.credits_reserved,
       j.credits_charged, coalesce((j.params->>'number_of_images')::int, 1) AS images,
       (SELECT count(*) FROM job_output o WHERE o.job_id = j.id) AS outputs,
       (SELECT count(*) FROM credit_entry c WHERE c.job_id = j.id AND c.kind = 'reserve')
           AS reserves,
       (SELECT count(*) FROM credit_entry c WHERE c.job_id = j.id AND c.kind = 'charge')
           AS charges,
       (SELECT count(*) FROM credit_entry c WHERE c.job_id = j.id AND c.kind = 'refund')
           AS refunds
FROM job j
WHERE j.id = ANY($1::uuid[])
ORDER BY j.id
"""

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


class Observer:
    """The test's view of the database, on a connection the Postgres fault spares."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def facts(self, job_ids: Sequence[str | uuid.UUID]) -> list[JobFacts]:
        rows = await self.connection.fetch(JOB_FACTS, [uuid.UUID(str(i)) for i in job_ids])
        return [
            JobFacts(
                id=row["id"],
                tenant_id=row["tenant_id"],
                status=row["status"],
                attempts=row["attempts"],
                error_code=row["error_code"],
                images=row["images"],
                outputs=row["outputs"],
                credits_reserved=row["credits_reserved"],
                credits_charged=row["credits_charged"],
                reserves=row["reserves"],
                charges=row["charges"],
                refunds=row["refunds"],
            )
            for row in rows
        ]

    async def status(self, job_id: str | uuid.UUID) -> tuple[str, int]:
        row = await self.connection.fetchrow(
            "SELECT status, attempts FROM job WHERE id = $1", uuid.UUID(str(job_id))
        )
        assert row is not None, f"no job {job_id}"
        return str(row["status"]), int(row["attempts"])

    async def wait_for(
        self,
        job_ids: Sequence[str | uuid.UUID],
        done: Callable[[JobFacts], bool] = lambda facts: facts.status in TERMINAL,
        timeout_s: float = 20.0,
        describe: Callable[[], str] = lambda: "",
    ) -> list[JobFacts]:
        """Poll until `done` holds for every job; the facts then (or fail, saying why)."""
        deadline = time.monotonic() + timeout_s
        while True:
            facts = await self.facts(job_ids)
            if len(facts) == len(job_ids) and all(done(f) for f in facts):
                return facts
            if time.monotonic() > deadline:
                waiting = Counter((f.status, f.attempts) for f in facts if not done(f))
                raise AssertionError(
                    f"after {timeout_s:g} s, {sum(waiting.values())} of {len(job_ids)} jobs "
                    f"are not done, by (status, attempts): {dict(waiting)}\n{describe()}"
                )
            await asyncio.sleep(0.1)

    async def balance_and_ledger(self, tenant_id: uuid.UUID) -> tuple[int, int]:
        row = await self.connection.fetchrow(
            "SELECT t.credit_balance, "
            "(SELECT coalesce(sum(amount), 0) FROM credit_entry c WHERE c.tenant_id = t.id) "
            "FROM tenant t WHERE t.id = $1",
            tenant_id,
        )
        assert row is not None
        return int(row[0]), int(row[1])

    async def all_ids(self, table: str) -> list[uuid.UUID]:
        assert table in ("job", "webhook_delivery")
        return [row[0] for row in await self.connection.fetch(f"SELECT id FROM {table}")]


@pytest.fixture
async def observer(migrated: None) -> AsyncIterator[Observer]:
    connection = await asyncpg.connect(
        f"{PG_SERVER}/{TEST_DATABASE}", server_settings={"application_name": OBSERVER_APP}
    )
    try:
        yield Observer(connection)
    finally:
        await connection.close()


@dataclass
class Tally:
    """The figures every fault test reports: all of lost, duplicated, double charged are 0."""

    jobs: int = 0
    lost: list[uuid.UUID] = field(default_factory=list)
    duplicated: list[uuid.UUID] = field(default_factory=list)
    double_charged: list[uuid.UUID] = field(default_factory=list)
    unsettled: list[uuid.UUID] = field(default_factory=list)
    attempts: Counter[int] = field(default_factory=Counter)

    def line(self, **more: object) -> str:
        extra = "".join(f" {name}={value}" for name, value in more.items())
        return (
            f"jobs={self.jobs} lost={len(self.lost)} duplicated={len(self.duplicated)} "
            f"double_charged={len(self.double_charged)} unsettled={len(self.unsettled)} "
            f"attempts={dict(sorted(self.attempts.items()))}{extra}"
        )


def tally(
    facts: Iterable[JobFacts],
    *,
    expected_status: str,
    webhooks: dict[uuid.UUID, int] | None = None,
    max_attempts: int | None = None,
) -> Tally:
    """Lost: not in `expected_status`. Duplicated: more outputs than images, more than one
    `completed` webhook, or more attempts than `max_attempts`. Double charged: a second
    reserve, charge or refund. Unsettled: no charge or refund (or a reservation missing)."""
    result = Tally()
    for job in facts:
        result.jobs += 1
        result.attempts[job.attempts] += 1
        if job.status != expected_status:
            result.lost.append(job.id)
        too_many_webhooks = webhooks is not None and webhooks.get(job.id, 0) > 1
        too_many_runs = max_attempts is not None and job.attempts > max_attempts
        if job.outputs > job.images or too_many_webhooks or too_many_runs:
            result.duplicated.append(job.id)
        if job.double_charged:
            result.double_charged.append(job.id)
        if not job.settled_once:
            result.unsettled.append(job.id)
    return result


# --- Postgres ---------------------------------------------------------------------------------

TERMINATE = """
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
FROM pg_stat_activity
WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND application_name <> $2
"""


class PostgresAdmin:
    """A superuser connection to the `postgres` database, to kill the test database's
    connections (all but the observer's) as a Postgres restart would."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def terminate_connections(self) -> int:
        """Kill every client connection to the test database but the observer's; how many."""
        killed: int = await self.connection.fetchval(TERMINATE, TEST_DATABASE, OBSERVER_APP)
        return killed


@pytest.fixture
async def postgres_admin(migrated: None) -> AsyncIterator[PostgresAdmin]:
    connection = await asyncpg.connect(
        f"{PG_SERVER}/postgres", server_settings={"application_name": OBSERVER_APP}
    )
    try:
        yield PostgresAdmin(connection)
    finally:
        await connection.close()


# --- Redis --------------------------------------------------------------------------------------


async def forget_jobs(redis: ArqRedis, settings: Settings, job_ids: Iterable[str]) -> int:
    """What a Redis restart without persistence (or a FLUSHALL) does to this run: the queue and
    the jobs' arq keys are gone. How many keys were deleted."""
    keys = [settings.queue_name]
    for job_id in job_ids:
        keys += [job_key_prefix + job_id, in_progress_key_prefix + job_id]
    deleted: int = await redis.delete(*keys)
    return deleted


async def delete_arq_keys(redis: ArqRedis, ids: set[str]) -> None:
    """Delete the arq keys (job, in-progress, retry, result) of this run's jobs and webhook
    deliveries: `arq:<kind>:<job id>` or `arq:<kind>:webhook:<delivery id>:<attempt>`."""
    if not ids:
        return
    doomed = []
    async for raw in redis.scan_iter(match=f"{ARQ_PREFIX}*", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        parts = key.split(":")
        if len(parts) >= 3 and (parts[2] in ids or (len(parts) >= 4 and parts[3] in ids)):
            doomed.append(key)
    if doomed:
        await redis.delete(*doomed)


# --- after every test ---------------------------------------------------------------------------


def run_audit(settings: Settings) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RELIGHT_")}
    return subprocess.run(
        [str(BIN / "relight-admin"), "credits", "audit"],
        env={
            **inherited,
            "RELIGHT_ENVIRONMENT": "test",
            "RELIGHT_DATABASE_URL": settings.database_url,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(autouse=True)
async def audited_and_tidy(
    settings: Settings, migrated: None, redis: ArqRedis
) -> AsyncIterator[None]:
    """After the test (and its workers): `relight-admin credits audit` exits 0; this run's arq
    keys are deleted (job keys outlive their queue for a day otherwise)."""
    yield
    connection = await asyncpg.connect(
        f"{PG_SERVER}/{TEST_DATABASE}", server_settings={"application_name": OBSERVER_APP}
    )
    try:
        observer = Observer(connection)
        ids = {str(i) for i in await observer.all_ids("job")}
        ids |= {str(i) for i in await observer.all_ids("webhook_delivery")}
    finally:
        await connection.close()
    await delete_arq_keys(redis, ids)
    audit = await asyncio.to_thread(run_audit, settings)
    assert audit.returncode == 0, f"relight-admin credits audit: {audit.stdout}{audit.stderr}"
