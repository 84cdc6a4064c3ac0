"""What one job costs the shared services, and what one worker process completes: the inputs of
the capacity model in the README ("Deploying at scale"), with the filesystem store and with an
S3-compatible bucket (moto's `moto_server` on 127.0.0.1) in the same run.

In one process, on a scratch database and a queue of its own: the product's api app (behind an
ASGI client) takes `--jobs` submits with an inline subject, then the product's worker (with a
no-op `local` backend, `bench/noop_worker.py`) drains them in burst mode. Counted per job:
Postgres statements (every statement SQLAlchemy sends, api and worker) and Redis commands
(`INFO commandstats`, the whole server: run it on a quiet Redis), for the submit and for the
run; and the worker's jobs/s.

    .venv/bin/python bench/scale.py [--jobs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy import event
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli import parse_args  # noqa: E402
from bench.common import (  # noqa: E402
    DATABASE_URL,
    REDIS_URL,
    create_bench_tenant,
    create_scratch_database,
    drop_queue,
    drop_scratch_database,
    markdown_table,
)
from bench.noop_worker import NoopBackend, tiny_png  # noqa: E402

STATEMENTS = [0]


def _count_statement(*_: Any) -> None:
    STATEMENTS[0] += 1


async def _redis_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(value["calls"]) for value in stats.values())


@asynccontextmanager
async def _store(kind: str, scratch: Path) -> AsyncIterator[dict[str, Any]]:
    """Settings overrides for the filesystem store, or for a bucket on a fresh moto_server."""
    if kind == "filesystem":
        yield {"storage_dir": scratch / "storage"}
        return
    from tests.fakes.s3 import s3_server

    with s3_server(scratch / "moto") as server:
        server.create_bucket("relight-bench")
        yield {
            "storage_url": "s3://relight-bench/run",
            "s3_endpoint_url": server.endpoint_url,
            "storage_dir": scratch / "unused",
        }


async def _measure(kind: str, jobs: int, key: str, scratch: Path) -> dict[str, float]:
    from api.app import create_app
    from relight.core.config import Settings
    from relight.core.params import Backend
    from worker.settings import build_worker

    queue = f"relight:bench-scale:{uuid.uuid4().hex[:8]}"
    async with _store(kind, scratch) as overrides:
        settings = Settings(
            database_url=DATABASE_URL,
            redis_url=REDIS_URL,
            queue_name=queue,
            log_level="WARNING",
            worker_metrics_port=0,
            **overrides,
        )
        body = {
            "prompt": "a cat",
            "subject_image": base64.b64encode(tiny_png()).decode(),
            "width": 256,
            "height": 256,
            "output_format": "png",
        }
        redis = Redis.from_url(REDIS_URL)
        app = create_app(settings)
        try:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://bench"
                ) as client:
                    STATEMENTS[0] = 0
                    calls = await _redis_calls(redis)
                    for _ in range(jobs):
                        response = await client.post(
                            "/v2/ic-light", headers={"x-api-key": key}, json=body
                        )
                        assert response.status_code == 202, response.text
                    submit_statements = STATEMENTS[0] / jobs
                    submit_redis = (await _redis_calls(redis) - calls - 1) / jobs

            worker = build_worker(
                settings,
                backends={Backend.LOCAL: NoopBackend()},
                burst=True,
                poll_delay=0,
                handle_signals=False,
            )
            STATEMENTS[0] = 0
            calls = await _redis_calls(redis)
            started = time.perf_counter()
            try:
                await worker.async_run()
            finally:
                await worker.close()
            seconds = time.perf_counter() - started
            run_statements = STATEMENTS[0] / jobs
            run_redis = (await _redis_calls(redis) - calls - 1) / jobs
        finally:
            await redis.aclose()
            await drop_queue(queue)
    return {
        "submit_statements": submit_statements,
        "submit_redis": submit_redis,
        "run_statements": run_statements,
        "run_redis": run_redis,
        "jobs_per_s": jobs / seconds,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    args = parse_args(parser, jobs=5)
    event.listen(Engine, "before_cursor_execute", _count_statement)
    await create_scratch_database()
    try:
        _, key = await create_bench_tenant()
        rows = []
        with tempfile.TemporaryDirectory(prefix="relight-scale-") as scratch:
            for kind in ("filesystem", "s3"):
                figures = await _measure(kind, args.jobs, key, Path(scratch) / kind)
                rows.append(
                    [
                        kind,
                        f"{figures['submit_statements']:.1f}",
                        f"{figures['submit_redis']:.1f}",
                        f"{figures['run_statements']:.1f}",
                        f"{figures['run_redis']:.1f}",
                        f"{figures['jobs_per_s']:.0f}",
                    ]
                )
    finally:
        await drop_scratch_database()
    print(
        f"Per job, {args.jobs} jobs (inline 8x8 subject, no-op backend, webhooks off; "
        "in-process api and one worker)"
    )
    print(
        markdown_table(
            [
                "store",
                "submit: Postgres statements",
                "submit: Redis commands",
                "run: Postgres statements",
                "run: Redis commands",
                "worker jobs/s",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
