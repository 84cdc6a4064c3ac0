"""Shared by the benchmarks: a freshly migrated scratch database, and percentiles."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[1]
PG_SERVER = os.environ.get("RELIGHT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
DATABASE = "relight_bench"
DATABASE_URL = PG_SERVER.replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{DATABASE}"


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def create_scratch_database() -> str:
    """Create (anew) and migrate the benchmark database; its SQLAlchemy URL."""
    await _admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    await _admin(f'CREATE DATABASE "{DATABASE}"')
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", DATABASE_URL)
    config.attributes["configure_logger"] = False
    await asyncio.to_thread(command.upgrade, config, "head")
    return DATABASE_URL


async def drop_scratch_database() -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]
