"""The gateway as `relight-api` serves it, plus two bench-only routes (never in the product):

- `POST /bench/framework-floor`: reads and validates the submit body exactly as
  `POST /v2/ic-light` does, then answers 202 without any I/O: what the framework costs;
- `POST /bench/io-floor`: the same validation, then only the durable work a submit cannot
  avoid, written with the raw drivers: one asyncpg transaction (a conditional credit debit and
  the job insert) and one arq enqueue.

    .venv/bin/python bench/floors.py --port 8001   (RELIGHT_* settings from the environment)

It is served and measured by bench/submit.py; `--smoke` only builds the app and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import uvicorn
from fastapi import FastAPI, Request

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.app import create_app  # noqa: E402
from api.body import read_submission  # noqa: E402
from api.responses import OrjsonResponse  # noqa: E402
from api.state import AppState  # noqa: E402
from bench.cli import parse_args  # noqa: E402
from relight.core.config import Settings, get_settings  # noqa: E402
from relight.core.ids import uuid7  # noqa: E402
from relight.jobs.queue import RUN_JOB_TASK  # noqa: E402

DEBIT = """
UPDATE tenant SET credit_balance = credit_balance - $2, active_jobs = active_jobs + 1
WHERE id = $1 AND credit_balance >= $2 AND active_jobs < max_in_flight
RETURNING credit_balance
"""
INSERT_JOB = """
INSERT INTO job (id, tenant_id, status, params, input_url, seed, backend_requested,
                 credits_reserved, webhook_events, timings, backend_calls, created_at)
VALUES ($1, $2, 'queued', $3::jsonb, $4, $5, 'auto', $6, '["completed"]', '{}', '[]', now())
"""


def build_app(settings: Settings) -> FastAPI:
    app = create_app(settings)
    pool: list[asyncpg.Pool] = []
    pool_lock = asyncio.Lock()
    # For an in-process caller (bench/submit_cpu.py) to close before its database goes.
    app.state.bench_raw_pools = pool

    async def raw_pool() -> asyncpg.Pool:
        async with pool_lock:
            if not pool:
                dsn = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
                size = settings.database_pool_size
                pool.append(await asyncpg.create_pool(dsn, min_size=size, max_size=size))
        return pool[0]

    @app.post("/bench/framework-floor", include_in_schema=False)
    async def framework_floor(request: Request) -> Any:
        submitted = await read_submission(request, settings)
        job_id = uuid7()
        body = {"request_id": str(job_id), "status": "QUEUED", "seed": submitted.params.seed}
        return OrjsonResponse(body, status_code=202)

    @app.post("/bench/io-floor", include_in_schema=False)
    async def io_floor(request: Request) -> Any:
        submitted = await read_submission(request, settings)
        state: AppState = request.app.state.relight
        tenant_id = uuid.UUID(request.headers["x-bench-tenant"])
        job_id = uuid7()
        params = orjson.dumps(submitted.params.model_dump(mode="json", exclude={"seed"}))
        connection: asyncpg.Connection
        async with (await raw_pool()).acquire() as connection, connection.transaction():
            if await connection.fetchval(DEBIT, tenant_id, 10) is None:
                return OrjsonResponse({"error": "insufficient credits"}, status_code=406)
            await connection.execute(
                INSERT_JOB, job_id, tenant_id, params.decode(), submitted.subject.url, 42, 10
            )
        # arq's plain enqueue: the wake-up message the product adds is not part of the floor.
        await state.redis.enqueue_job(RUN_JOB_TASK, str(job_id), _job_id=str(job_id))
        return OrjsonResponse({"request_id": str(job_id), "status": "QUEUED"}, status_code=202)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int)
    args = parse_args(parser)
    app = build_app(get_settings())
    if args.smoke:
        print(f"floors: the app builds ({len(app.routes)} routes); bench/submit.py serves it")
        return
    if args.port is None:
        parser.error("--port is required")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
