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
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli import parse_args  # noqa: E402
from bench.common import (  # noqa: E402
    bench_env,
    create_bench_tenant,
    create_scratch_database,
    drop_queue,
    drop_scratch_database,
    markdown_table,
    percentile,
)
from scripts.stack import local_stack  # noqa: E402


async def prepare(url: str) -> str:
    """A tenant with plenty of credits and limits; its API key (`url` is the scratch database)."""
    return (await create_bench_tenant())[1]


STAGES = [
    ("queue wait", ["queue_wait_ms"]),
    ("input fetch + decode", ["fetch_ms", "decode_ms"]),
    ("engine", ["engine_ms"]),
    ("encode", ["encode_ms"]),
    ("store", ["store_ms"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    args = parse_args(parser, jobs=1)
    url = asyncio.run(create_scratch_database())
    key = asyncio.run(prepare(url))
    image = base64.b64encode((ROOT / "examples" / "chelsea.png").read_bytes()).decode()
    body = {"prompt": "cat, photoshoot, 4k", "subject_image": image, "seed": 42}
    headers = {"x-api-key": key, "Prefer": "wait=60"}
    client_ms: list[float] = []
    records: list[dict[str, float]] = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            env = bench_env(url, Path(scratch) / "storage")
            with local_stack(env, Path(scratch) / "logs") as client:
                client.post("/v2/ic-light", headers=headers, json=body)  # warm-up
                for _ in range(args.jobs):
                    started = time.perf_counter()
                    response = client.post("/v2/ic-light", headers=headers, json=body)
                    client_ms.append((time.perf_counter() - started) * 1000)
                    record = response.json()
                    if response.status_code != 200 or record["status"] != "COMPLETED":
                        raise SystemExit(f"job did not complete: {response.status_code} {record}")
                    records.append(record["timings"])
    finally:
        asyncio.run(drop_queue())
        asyncio.run(drop_scratch_database())
    rows = [("submit to completion (client)", client_ms)]
    staged: list[float] = [0.0] * len(records)
    for name, keys in STAGES:
        values = [sum(timings.get(key, 0.0) for key in keys) for timings in records]
        staged = [total + value for total, value in zip(staged, values, strict=True)]
        rows.append((f"  {name}", values))
    # Everything else: the submit itself, the claim, the final transaction, the notification.
    rows.append(
        ("  bookkeeping (the rest)", [c - s for c, s in zip(client_ms, staged, strict=True)])
    )
    title = (
        f"**Full job** (default parameters: 512x640 -> 768x960 webp, classic engine on the "
        f"`local` backend, {args.jobs} jobs one after another, `Prefer: wait`)"
    )
    table = [
        [name, f"{statistics.median(values):.1f}", f"{percentile(values, 0.9):.1f}"]
        for name, values in rows
    ]
    print(f"{title}\n\n{markdown_table(['stage', 'p50 ms', 'p90 ms'], table)}")


if __name__ == "__main__":
    main()
