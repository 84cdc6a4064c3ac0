"""`relight-admin` (issue 28, break 8): bytes that are not UTF-8 (`--name $'k\\xff'`) or a NUL
in any argument or option are a validation error naming it, never a database error, and
nothing is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.core.config import Settings
from tests.cli_runner import Result, admin_env, run_admin
from tests.conftest import MakeTenant

pytestmark = pytest.mark.slow

# What the shell passes for $'k\xff': Python hands it over as a lone surrogate.
UNDECODABLE = os.fsdecode(b"k\xff")


async def cli(settings: Settings, tmp_path: Path, *args: str) -> Result:
    env = {**admin_env(), "RELIGHT_DATABASE_URL": settings.database_url}
    return await run_admin(*args, env=env, cwd=tmp_path)


async def key_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("select count(*) from api_key")) or 0)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["key", "create", "acme", "--name", UNDECODABLE], "--name"),
        (["key", "create", UNDECODABLE], "tenant"),
        (["tenant", "create", UNDECODABLE], "name"),
        (["tenant", "suspend", UNDECODABLE], "tenant"),
        (["credits", "grant", "acme", "5", "--reason", UNDECODABLE], "--reason"),
        (["tenant", "set-webhook", "acme", "http://x/" + UNDECODABLE], "url"),
        (["key", "revoke", UNDECODABLE], "key"),
    ],
)
async def test_undecodable_bytes_are_a_validation_error_naming_the_option(
    settings: Settings,
    make_tenant: MakeTenant,
    engine: AsyncEngine,
    tmp_path: Path,
    args: list[str],
    named: str,
) -> None:
    await make_tenant("acme")
    keys = await key_count(engine)

    result = await cli(settings, tmp_path, *args)

    error = result.error()
    assert error["code"] == "validation_error", error
    assert error["error"].startswith(f"{named}: must not contain U+DCFF"), error
    assert await key_count(engine) == keys
