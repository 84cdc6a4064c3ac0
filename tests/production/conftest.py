"""Production's middlemen, for real: a PgBouncer in transaction pooling in front of the test
database, and a Redis primary, its replica and a Sentinel on ports of their own.

Each server is the Debian package's binary (`make test` installs them through
scripts/ensure-tool.sh), run from a temporary directory with a config of its own and stopped by
its pid; a test that needs one is skipped where the binary is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import RedisError

from api.app import create_app
from relight.core.config import Settings
from scripts.stack import free_port
from tests.conftest import PG_SERVER, TEST_DATABASE

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


def binary(name: str) -> str:
    """The path of a server binary, or skip the test (`make test` installs them)."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if found is None:
        pytest.skip(f"{name} is not installed (make test installs it)")
    return found


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str, every_s: float = 0.05
) -> None:
    """Poll `condition` until it holds; fail after `timeout_s` saying what was awaited."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"after {timeout_s:g} s still waiting for {what}"
        await asyncio.sleep(every_s)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM by pid, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_server(command: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=cwd)


# --- PgBouncer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgBouncer:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, database: str = TEST_DATABASE) -> str:
        """SQLAlchemy URL of `database` through the pooler."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"


PGBOUNCER_INI = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/users.txt
pool_mode = {pool_mode}
; Few server connections for many clients: with transaction pooling, transactions of one client
; connection land on different server connections, as under production load.
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 500
; asyncpg and SQLAlchemy send these at connect; a pooler must not refuse them.
ignore_startup_parameters = extra_float_digits,search_path,jit
server_lifetime = 600
server_idle_timeout = 60
admin_users = postgres
"""


@contextlib.contextmanager
def running_pgbouncer(directory: Path, pool_mode: str, pool_size: int) -> Iterator[PgBouncer]:
    """PgBouncer in `pool_mode` in front of the test database's server, for the block."""
    executable = binary("pgbouncer")
    server = PG_SERVER.removeprefix("postgresql://").rpartition("@")[2]
    host, _, pg_port = server.partition(":")
    port = free_port()
    (directory / "users.txt").write_text('"postgres" ""\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        PGBOUNCER_INI.format(
            host=host,
            port=pg_port or "5432",
            listen_port=port,
            directory=directory,
            pool_mode=pool_mode,
            pool_size=pool_size,
        )
    )
    # PgBouncer refuses to run as root; as root, it runs as the postgres user.
    user = ["-u", "postgres"] if os.geteuid() == 0 else []
    if user:
        shutil.chown(directory, "postgres")
        for path in directory.iterdir():
            shutil.chown(path, "postgres")
    log = directory / "pgbouncer.log"
    process = start_server([executable, *user, str(ini)], log, directory)
    try:
        asyncio.run(_wait_for_pgbouncer(port, process, log))
        yield PgBouncer(port=port, process=process, log=log)
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def pgbouncer(migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    """PgBouncer in transaction pooling, four server connections for all its clients."""
    with running_pgbouncer(tmp_path_factory.mktemp("pgbouncer"), "transaction", 4) as pooler:
        yield pooler


@pytest.fixture(scope="session")
def session_pgbouncer(
    migrated: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgBouncer]:
    """PgBouncer in session pooling (a client keeps its server connection while connected)."""
    with running_pgbouncer(tmp_path_factory.mktemp("pgbouncer-session"), "session", 20) as pooler:
        yield pooler


async def _wait_for_pgbouncer(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, f"pgbouncer exited: {log.read_text()}"  # noqa: ASYNC240
        try:
            connection = await asyncpg.connect(
                f"postgresql://postgres@127.0.0.1:{port}/{TEST_DATABASE}", statement_cache_size=0
            )
        except (OSError, asyncpg.PostgresError):
            assert time.monotonic() < deadline, f"pgbouncer silent: {log.read_text()}"  # noqa: ASYNC240
            await asyncio.sleep(0.1)
        else:
            await connection.close()
            return


@pytest.fixture
def pooled_settings(settings: Settings, pgbouncer: PgBouncer) -> Settings:
    """The test settings with the database through PgBouncer (transaction pooling), LISTEN on
    the direct connection."""
    return settings.model_copy(
        update={
            "database_url": pgbouncer.url(),
            "database_pooler": "transaction",
            "database_listen_url": settings.database_url,
        }
    )


@contextlib.asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An api app of its own for `settings` (its lifespan running), and a client to it."""
    application: FastAPI = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


# --- the jobs' bookkeeping ----------------------------------------------------------------------


@dataclass(frozen=True)
class JobBooks:
    """One job's status and what the ledger says about it."""

    id: uuid.UUID
    status: str
    credits_reserved: int
    credits_charged: int
    reserves: int
    charges: int
    refunds: int
    outputs: int


JOB_BOOKS = """
SELECT j.id, j.status, j.credits_reserved, j.credits_charged,
       (SELECT count(*) FROM job_output o WHERE o.job_id = j.id) AS outputs,
       (SELECT count(*) FROM credit_entry c WHERE c.job_id = j.id AND c.kind = 'reserve')
           AS reserves,
       (SELECT count(*) FROM credit_entry c WHERE c.job_id = j.id AND c.kind = 'charge')
           AS charges,
       (SELECT count(*) FROM credit_entry c WHERE c.job_id = j.id AND c.kind = 'refund')
           AS refunds
FROM job j WHERE j.id = ANY($1::uuid[]) ORDER BY j.id
"""


@dataclass
class Books:
    """Reads the test database directly (never through the pooler under test)."""

    connection: asyncpg.Connection

    async def jobs(self, job_ids: Sequence[str | uuid.UUID]) -> list[JobBooks]:
        rows = await self.connection.fetch(JOB_BOOKS, [uuid.UUID(str(i)) for i in job_ids])
        return [JobBooks(**dict(row)) for row in rows]

    async def wait_finished(
        self, job_ids: Sequence[str | uuid.UUID], timeout_s: float
    ) -> list[JobBooks]:
        """Every job's books once all of them are terminal (fails after `timeout_s`)."""
        books: list[JobBooks] = []

        async def finished() -> bool:
            nonlocal books
            books = await self.jobs(job_ids)
            return len(books) == len(job_ids) and all(b.status in TERMINAL for b in books)

        await wait_until(finished, timeout_s, f"{len(job_ids)} jobs to finish", every_s=0.1)
        return books

    async def job_count(self, tenant_id: uuid.UUID) -> int:
        value = await self.connection.fetchval(
            "SELECT count(*) FROM job WHERE tenant_id = $1", tenant_id
        )
        return int(value)

    async def lift_limits(self, tenant_id: uuid.UUID) -> None:
        """Rate and in-flight limits far above what a test sends (before any api caches it)."""
        await self.connection.execute(
            "UPDATE tenant SET requests_per_minute = 1000000, burst = 100000, "
            "max_in_flight = 100000 WHERE id = $1",
            tenant_id,
        )

    async def balance_and_ledger(self, tenant_id: uuid.UUID) -> tuple[int, int]:
        row = await self.connection.fetchrow(
            "SELECT t.credit_balance, (SELECT coalesce(sum(amount), 0) FROM credit_entry c "
            "WHERE c.tenant_id = t.id) FROM tenant t WHERE t.id = $1",
            tenant_id,
        )
        assert row is not None
        return int(row[0]), int(row[1])


@pytest.fixture
async def books(migrated: None) -> AsyncIterator[Books]:
    connection = await asyncpg.connect(f"{PG_SERVER}/{TEST_DATABASE}")
    try:
        yield Books(connection)
    finally:
        await connection.close()


def assert_completed_once(books: Sequence[JobBooks]) -> None:
    """Every job succeeded, reserved once and was charged once, what it reserved."""
    for job in books:
        assert job.status == "succeeded", job
        assert (job.reserves, job.charges, job.refunds) == (1, 1, 0), job
        assert job.credits_reserved == job.credits_charged > 0, job
        assert job.outputs == 1, job


# --- Redis Sentinel -----------------------------------------------------------------------------

SERVICE_NAME = "relight-primary"

SENTINEL_CONF = """\
port {port}
bind 127.0.0.1
daemonize no
dir {directory}
sentinel monitor {service} 127.0.0.1 {primary_port} 1
sentinel down-after-milliseconds {service} 1000
sentinel failover-timeout {service} 2000
sentinel parallel-syncs {service} 1
"""


@dataclass
class RedisSentinelSet:
    """A primary, its replica and one sentinel watching them, each a process of its own."""

    directory: Path
    primary_port: int
    replica_port: int
    sentinel_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """`RELIGHT_REDIS_URL` naming the service through its sentinel (database 0)."""
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE_NAME}/0"

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def start_redis(self, name: str, port: int, *extra: str) -> None:
        command = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory), *extra]
        self.processes[name] = start_server(command, self.directory / f"{name}.log", self.directory)

    def start_sentinel(self) -> None:
        conf = self.directory / "sentinel.conf"
        conf.write_text(
            SENTINEL_CONF.format(
                port=self.sentinel_port,
                directory=self.directory,
                service=SERVICE_NAME,
                primary_port=self.primary_port,
            )
        )
        self.processes["sentinel"] = start_server(
            [binary("redis-sentinel"), str(conf)], self.directory / "sentinel.log", self.directory
        )

    def kill_primary(self) -> None:
        """SIGKILL the primary by its pid: no shutdown, no last write reaches the replica."""
        process = self.processes["primary"]
        process.kill()
        process.wait()

    async def primary_address(self) -> tuple[str, int]:
        redis = Redis(port=self.sentinel_port, socket_connect_timeout=1)
        try:
            get_primary = redis.sentinel_get_master_addr_by_name
            host, port = await get_primary(SERVICE_NAME)  # type: ignore[no-untyped-call]
        finally:
            await redis.aclose()
        return host.decode() if isinstance(host, bytes) else str(host), int(port)

    async def wait_ready(self) -> None:
        """The replica in sync and known to the sentinel: a failover can happen."""
        replica = Redis(port=self.replica_port, socket_connect_timeout=1)
        sentinel = Redis(port=self.sentinel_port, socket_connect_timeout=1)

        async def replica_in_sync() -> bool:
            with contextlib.suppress(RedisError):
                info = await replica.info("replication")
                return bool(info.get("master_link_status") == "up")
            return False

        async def sentinel_knows_the_replica() -> bool:
            with contextlib.suppress(RedisError):
                replicas = await sentinel.sentinel_slaves(SERVICE_NAME)  # type: ignore[no-untyped-call]
                return len(replicas) == 1
            return False

        try:
            await wait_until(replica_in_sync, 20, "the replica to sync")
            if "sentinel" not in self.processes:
                self.start_sentinel()
            await wait_until(sentinel_knows_the_replica, 20, "the sentinel to see the replica")
        finally:
            await replica.aclose()
            await sentinel.aclose()

    async def wait_failover(self, timeout_s: float = 30) -> None:
        """Until the sentinel names the replica as the primary, and the replica acts as one."""
        replica = Redis(port=self.replica_port, socket_connect_timeout=1)

        async def promoted() -> bool:
            with contextlib.suppress(RedisError, OSError):
                if await self.primary_address() != ("127.0.0.1", self.replica_port):
                    return False
                info = await replica.info("replication")
                return bool(info.get("role") == "master")
            return False

        try:
            await wait_until(promoted, timeout_s, "the sentinel to promote the replica", 0.1)
        except AssertionError as failed:
            raise AssertionError(f"{failed}\nsentinel log:\n{self.log('sentinel')}") from None
        finally:
            await replica.aclose()

    def stop(self) -> None:
        for process in self.processes.values():
            stop_process(process)


@pytest.fixture
async def redis_sentinel(tmp_path: Path) -> AsyncIterator[RedisSentinelSet]:
    """A fresh primary + replica + sentinel for one test (failover tests change who is who)."""
    servers = RedisSentinelSet(
        directory=tmp_path / "redis",
        primary_port=free_port(),
        replica_port=free_port(),
        sentinel_port=free_port(),
    )
    servers.directory.mkdir()
    try:
        servers.start_redis("primary", servers.primary_port)
        servers.start_redis(
            "replica", servers.replica_port, "--replicaof", "127.0.0.1", str(servers.primary_port)
        )
        await servers.wait_ready()
        yield servers
    finally:
        servers.stop()
