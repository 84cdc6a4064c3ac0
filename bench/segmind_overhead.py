"""The time our service adds around a Segmind call, measured against the stand-in.

Real `relight-api` and `relight-worker` processes, with the Segmind backend pointed at the
stand-in (`tests/fakes/segmind.py`, a real HTTP server on 127.0.0.1 that answers an image in
about a millisecond). Each request: `backend: "segmind"`, default parameters, inline subject,
`Prefer: wait=60`. Overhead = what the client waited minus what the stand-in spent.

    .venv/bin/python bench/segmind_overhead.py [--jobs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli import parse_args  # noqa: E402
from bench.common import (  # noqa: E402
    bench_env,
    create_scratch_database,
    drop_queue,
    drop_scratch_database,
    percentile,
)
from bench.e2e import prepare  # noqa: E402
from scripts.stack import local_stack  # noqa: E402
from tests.fakes.segmind import DEFAULT_API_KEY, SegmindStandIn  # noqa: E402


def row(name: str, values: list[float]) -> str:
    return f"{name:<44}{statistics.median(values):>9.1f}{percentile(values, 0.9):>9.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30)
    args = parse_args(parser, jobs=2)
    url = asyncio.run(create_scratch_database())
    key = asyncio.run(prepare(url))
    image = base64.b64encode((ROOT / "examples" / "chelsea.png").read_bytes()).decode()
    body = {"prompt": "cat", "subject_image": image, "backend": "segmind", "seed": 1}
    headers = {"x-api-key": key, "Prefer": "wait=60"}
    client_ms: list[float] = []
    worker_ms: list[float] = []
    upstream_ms: list[float] = []
    stand_in_ms: list[float] = []
    with (
        SegmindStandIn(credits=Decimal(10**9)) as stand_in,
        tempfile.TemporaryDirectory() as scratch,
    ):
        env = bench_env(
            url,
            Path(scratch) / "storage",
            RELIGHT_SEGMIND_API_KEY=DEFAULT_API_KEY,
            RELIGHT_SEGMIND_BASE_URL=stand_in.url,
        )
        with local_stack(env, Path(scratch) / "logs") as client:
            client.post("/v2/ic-light", headers=headers, json=body)  # warm-up
            for _ in range(args.jobs):
                calls_before = len(stand_in.calls())
                started = time.perf_counter()
                response = client.post("/v2/ic-light", headers=headers, json=body)
                client_ms.append((time.perf_counter() - started) * 1000)
                record = response.json()
                if record.get("status") != "COMPLETED":
                    raise SystemExit(f"job did not complete: {record}")
                [call] = stand_in.calls()[calls_before:]
                assert call.processing_ms is not None
                stand_in_ms.append(call.processing_ms)
                worker_ms.append(record["timings"]["total_ms"])
                upstream_ms.append(record["timings"]["upstream_ms"])
    asyncio.run(drop_queue())
    asyncio.run(drop_scratch_database())
    print(f"Segmind backend against the stand-in, {args.jobs} requests in sequence")
    print(f"{'':<44}{'p50 ms':>9}{'p90 ms':>9}")
    print(row("client: submit to answer (Prefer: wait)", client_ms))
    print(row("stand-in: its own time per call", stand_in_ms))
    print(row("worker: upstream call (HTTP round trip)", upstream_ms))
    print(row("worker: claim to commit", worker_ms))
    overhead = [c - s for c, s in zip(client_ms, stand_in_ms, strict=True)]
    around = [w - u for w, u in zip(worker_ms, upstream_ms, strict=True)]
    print(row("overhead, end to end (client - stand-in)", overhead))
    print(row("overhead inside the worker (total - call)", around))


if __name__ == "__main__":
    main()
