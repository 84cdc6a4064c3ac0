"""Two `alembic upgrade head` at once on a fresh database, as the api's and the workers' init
containers run them (deploy/kubernetes): both succeed and the schema is migrated once."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from alembic.script import ScriptDirectory

from scripts.stack import BIN
from tests.conftest import ROOT, alembic_config, database_url, drop_database, recreate_database
from tests.migrations.test_migrations import current_revision, public_tables

pytestmark = pytest.mark.slow

SCRATCH = f"relight_migration_race_{uuid.uuid4().hex[:8]}"
RUNNERS = 3


@pytest.fixture
async def fresh_database() -> AsyncIterator[str]:
    await recreate_database(SCRATCH)
    try:
        yield database_url(SCRATCH)
    finally:
        await drop_database(SCRATCH)


async def alembic_upgrade_head(url: str) -> tuple[int, str]:
    """`alembic upgrade head` as its own process, as a pod runs it."""
    process = await asyncio.create_subprocess_exec(
        str(BIN / "alembic"),
        "upgrade",
        "head",
        cwd=ROOT,
        env={**os.environ, "RELIGHT_DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_concurrent_upgrades_of_a_fresh_database_all_succeed(fresh_database: str) -> None:
    script = ScriptDirectory.from_config(alembic_config(fresh_database))
    head = script.get_current_head()

    results = await asyncio.gather(*(alembic_upgrade_head(fresh_database) for _ in range(RUNNERS)))

    for returncode, output in results:
        assert returncode == 0, output
    assert await current_revision(fresh_database) == head
    assert "alembic_version" in await public_tables(fresh_database)
    # Each revision ran once: the later runners found the schema at head.
    ran = [output.count("Running upgrade") for _, output in results]
    revisions = len(list(script.walk_revisions()))
    assert sorted(ran) == [0] * (RUNNERS - 1) + [revisions], ran
