"""CPU per submit, in process: `POST /v2/ic-light` against the floors of `bench/floors.py`.

The app of `bench/floors.py` (the real `create_app()` plus the two floor routes) is called
directly as an ASGI app, one request at a time, on a scratch database and a queue of its own.
The three endpoints take turns in blocks of `--block` requests and each block's process CPU
time is added to its endpoint's, so that other work on a loaded machine weighs on all three
alike: the ratio "submit / I/O floor" stays comparable between runs where req/s under wrk
does not. `--profile` also prints cProfile's costliest functions of the submits alone.

    .venv/bin/python bench/submit_cpu.py [--requests 3000] [--block 100] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import orjson
from starlette.types import ASGIApp, Message

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
)
from bench.floors import build_app  # noqa: E402
from bench.submit import BODY  # noqa: E402

SUBMIT = "/v2/ic-light"
PATHS = (SUBMIT, "/bench/io-floor", "/bench/framework-floor")


async def call(app: ASGIApp, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    """One POST straight into the ASGI app; its status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 40000),
        "headers": headers,
    }
    sent = False
    statuses: list[int] = []

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect while the app answers
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


async def measure(args: argparse.Namespace) -> tuple[dict[str, float], str]:
    """CPU ms per request of each endpoint, and the profile of the submits (or "")."""
    url = await create_scratch_database()
    tenant_id, key = await create_bench_tenant()
    with tempfile.TemporaryDirectory() as scratch:
        os.environ.update(bench_env(url, Path(scratch) / "storage"))
        from relight.core.config import Settings

        app = build_app(Settings())
        body = orjson.dumps(BODY)
        headers = [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-api-key", key.encode()),
            (b"x-bench-tenant", str(tenant_id).encode()),
        ]
        cpu = dict.fromkeys(PATHS, 0.0)
        done = dict.fromkeys(PATHS, 0)
        profile = cProfile.Profile()
        try:
            async with app.router.lifespan_context(app):
                for path in PATHS:  # warm up: connections, caches, prepared statements
                    for _ in range(min(50, args.block)):
                        status = await call(app, path, headers, body)
                        assert status == 202, f"{path} answered {status}"
                while done[SUBMIT] < args.requests:
                    for path in PATHS:
                        started = time.process_time()
                        for _ in range(args.block):
                            await call(app, path, headers, body)
                        cpu[path] += time.process_time() - started
                        done[path] += args.block
                if args.profile:
                    profile.enable()
                    for _ in range(args.requests):
                        await call(app, SUBMIT, headers, body)
                    profile.disable()
                for pool in app.state.bench_raw_pools:
                    await pool.close()
        finally:
            await drop_queue()
            await drop_scratch_database()
    per_request = {path: cpu[path] / done[path] * 1000 for path in PATHS}
    return per_request, _top(profile, args.requests) if args.profile else ""


def _top(profile: cProfile.Profile, requests: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    # cProfile counts each resumption of a coroutine as a call: a relative figure only.
    calls: int = stats.total_calls  # type: ignore[attr-defined]  # set by pstats, not in its stubs
    out.write(f"python calls per submit (cProfile's count): {calls / requests:.0f}\n")
    stats.sort_stats("cumulative").print_stats(r"/(api|relight)/", 40)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="submits measured")
    parser.add_argument("--block", type=int, default=100, help="requests per turn")
    parser.add_argument("--profile", action="store_true", help="print the submits' profile")
    args = parse_args(parser, requests=20, block=10)
    per_request, profile = asyncio.run(measure(args))
    submit, io_floor, framework = (per_request[path] for path in PATHS)
    rows = [
        [path, f"{per_request[path]:.3f}", f"{per_request[path] / io_floor:.2f}"] for path in PATHS
    ]
    print(f"**CPU per request** ({args.requests} of each, in turns of {args.block}, one process)\n")
    print(markdown_table(["endpoint", "CPU ms", "of I/O floor"], rows))
    print(
        f"\nsubmit costs {submit - io_floor:.3f} ms more than the I/O floor, "
        f"{submit - framework:.3f} ms more than the framework floor"
    )
    if profile:
        print(f"\n{profile}")


if __name__ == "__main__":
    main()
