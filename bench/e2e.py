"""Submit-to-completion time of default jobs on the `local` backend, and where it goes.

Starts a real `relight-api` and `relight-worker` (as `make demo` does) on a scratch database,
submits N default requests one after another with `Prefer: wait=60` (the answer comes when the
job-finished notification arrives), and prints the client-side time with the worker's own
breakdown (queue wait, input, engine, encode, store).

    .venv/bin/python bench/e2e.py [--jobs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import create_scratch_database, drop_scratch_database, percentile  # noqa: E402
from relight.config import Settings  # noqa: E402
from relight.db import create_engine, create_sessionmaker  # noqa: E402
from relight.tenants.schemas import LimitsUpdate  # noqa: E402
from relight.tenants.service import create_api_key, create_tenant  # noqa: E402
from scripts.stack import local_stack  # noqa: E402


async def prepare(url: str) -> str:
    """A tenant with plenty of credits and limits; its API key."""
    engine = create_engine(Settings(database_url=url), pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            limits = LimitsUpdate(requests_per_minute=100_000, burst=10_000, max_in_flight=1000)
            tenant = await create_tenant(session, "bench", 10**9, limits)
            return (await create_api_key(session, tenant, "bench")).key
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    url = asyncio.run(create_scratch_database())
    key = asyncio.run(prepare(url))
    image = base64.b64encode((ROOT / "examples" / "chelsea.png").read_bytes()).decode()
    body = {"prompt": "cat, photoshoot, 4k", "subject_image": image, "seed": 42}
    headers = {"x-api-key": key, "Prefer": "wait=60"}
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            **os.environ,
            "RELIGHT_DATABASE_URL": url,
            "RELIGHT_STORAGE_DIR": str(Path(scratch) / "storage"),
            "RELIGHT_QUEUE_NAME": "relight:bench",
            "RELIGHT_LOG_LEVEL": "WARNING",
        }
        with local_stack(env, Path(scratch) / "logs") as client:
            client.post("/v2/ic-light", headers=headers, json=body)  # warm-up
            client_ms: list[float] = []
            breakdown: dict[str, list[float]] = {}
            for _ in range(args.jobs):
                started = time.perf_counter()
                response = client.post("/v2/ic-light", headers=headers, json=body)
                client_ms.append((time.perf_counter() - started) * 1000)
                record = response.json()
                if response.status_code != 200 or record["status"] != "COMPLETED":
                    raise SystemExit(f"job did not complete: {response.status_code} {record}")
                for name, value in record["timings"].items():
                    breakdown.setdefault(name, []).append(value)
    asyncio.run(drop_scratch_database())
    print(f"default job (512x640 -> 768x960 webp, local backend), {args.jobs} jobs in sequence")
    print(f"{'stage':<34}{'p50 ms':>10}{'p90 ms':>10}")
    rows = [("submit to completion (client)", client_ms)]
    order = ["queue_wait_ms", "fetch_ms", "decode_ms", "engine_ms", "encode_ms", "store_ms"]
    rows += [(f"  {name.removesuffix('_ms')}", breakdown[name]) for name in order]
    rows.append(("  worker total (claim to commit)", breakdown["total_ms"]))
    for name, values in rows:
        print(f"{name:<34}{statistics.median(values):>10.1f}{percentile(values, 0.9):>10.1f}")


if __name__ == "__main__":
    main()
