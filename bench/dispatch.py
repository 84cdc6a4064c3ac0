"""Dispatch latency and throughput with a backend that does no work.

A real `relight-api` and one worker process (`bench/noop_worker.py`: the product's worker with
a no-op `local` backend) on a scratch database and a queue of their own; a webhook receiver on
127.0.0.1. Measures, from the job rows and the receiver:

- submit-to-start: from the submit's transaction (`created_at`) to the worker's claim
  (`started_at`), with jobs submitted one at a time to an idle worker;
- finish-to-webhook: from the commit that ends the job (`finished_at`) to the receiver getting
  the first attempt;
- jobs/s one worker completes, with `--burst` jobs submitted at once.

The worker keeps the default poll delay (1 s): new jobs reach it by the wake-up signal. With
`--history N` the measures are repeated with N finished jobs already in the table.

    .venv/bin/python bench/dispatch.py [--jobs 200] [--burst 500] [--history 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli import parse_args  # noqa: E402
from bench.common import (  # noqa: E402
    DATABASE,
    PG_SERVER,
    bench_env,
    create_bench_tenant,
    create_scratch_database,
    drop_queue,
    drop_scratch_database,
    markdown_table,
    percentile,
    seed_history,
)
from bench.noop_worker import tiny_png  # noqa: E402
from scripts.stack import BIN, free_port, running, wait_ready  # noqa: E402

arrivals: dict[str, float] = {}


class Receiver(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return

    def do_POST(self) -> None:
        arrived = time.time()
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        arrivals.setdefault(body["request_id"], arrived)
        self.send_response(204)
        self.end_headers()


@dataclass
class Measure:
    name: str
    start_p50: float
    start_p99: float
    webhook_p50: float
    webhook_p99: float
    jobs_per_s: float


async def job_times(ids: list[str]) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(f"{PG_SERVER}/{DATABASE}")
    try:
        rows: list[asyncpg.Record] = await connection.fetch(
            "SELECT id::text, status, created_at, started_at, finished_at FROM job "
            "WHERE id = ANY($1::uuid[])",
            ids,
        )
    finally:
        await connection.close()
    return rows


def wait_done(ids: list[str], timeout_s: float) -> list[asyncpg.Record]:
    """Wait until every job finished and its webhook arrived; their rows."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(request_id in arrivals for request_id in ids):
            break
        time.sleep(0.05)
    rows = asyncio.run(job_times(ids))
    unfinished = [row["id"] for row in rows if row["status"] != "succeeded"]
    if unfinished or len(rows) != len(ids):
        raise SystemExit(f"{len(unfinished)} jobs did not succeed within {timeout_s:g} s")
    return rows


async def submit_many(
    base: str, headers: dict[str, str], body: dict[str, object], n: int
) -> list[str]:
    """Submit `n` jobs at once (16 in flight); their ids."""
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=60
    ) as client:
        semaphore = asyncio.Semaphore(16)

        async def one() -> str:
            async with semaphore:
                response = await client.post("/v2/ic-light", json=body)
            response.raise_for_status()
            request_id: str = response.json()["request_id"]
            return request_id

        return list(await asyncio.gather(*(one() for _ in range(n))))


def measure(
    name: str,
    client: httpx.Client,
    base: str,
    headers: dict[str, str],
    body: dict[str, object],
    args: argparse.Namespace,
) -> Measure:
    ids = []
    for _ in range(args.jobs):
        response = client.post("/v2/ic-light", headers=headers, json=body)
        response.raise_for_status()
        ids.append(response.json()["request_id"])
        # Idle again before the next one: each job meets a worker waiting on its signal.
        time.sleep(args.gap_ms / 1000)
    rows = wait_done(ids, 60)
    to_start = [(r["started_at"] - r["created_at"]).total_seconds() * 1000 for r in rows]
    to_webhook = [(arrivals[r["id"]] - r["finished_at"].timestamp()) * 1000 for r in rows]
    burst_ids = asyncio.run(submit_many(base, headers, body, args.burst))
    burst = wait_done(burst_ids, 300)
    first = min(r["created_at"] for r in burst)
    last = max(r["finished_at"] for r in burst)
    jobs_per_s = len(burst) / max(1e-3, (last - first).total_seconds())
    return Measure(
        name,
        statistics.median(to_start),
        percentile(to_start, 0.99),
        statistics.median(to_webhook),
        percentile(to_webhook, 0.99),
        jobs_per_s,
    )


def run(args: argparse.Namespace) -> list[Measure]:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    url = asyncio.run(create_scratch_database())
    tenant_id, key = asyncio.run(create_bench_tenant())
    headers = {"x-api-key": key}
    subject = base64.b64encode(tiny_png()).decode()
    body: dict[str, object] = {"prompt": "noop", "subject_image": subject, "webhook_url": hook}
    results = []
    try:
        with tempfile.TemporaryDirectory() as scratch_dir:
            scratch = Path(scratch_dir)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            env = bench_env(
                url,
                scratch / "storage",
                RELIGHT_EGRESS_ALLOWLIST="127.0.0.1",
                RELIGHT_PUBLIC_BASE_URL=base,
            )
            api = [str(BIN / "relight-api"), "--port", str(port)]
            worker = [sys.executable, str(ROOT / "bench" / "noop_worker.py")]
            with (
                running("api", api, env, scratch / "logs") as api_process,
                running("worker", worker, env, scratch / "logs"),
                httpx.Client(base_url=base, timeout=60) as client,
            ):
                wait_ready(client, api_process)
                warm_up = [
                    client.post("/v2/ic-light", headers=headers, json=body) for _ in range(5)
                ]
                wait_done([r.json()["request_id"] for r in warm_up], 60)
                results.append(measure("dispatch", client, base, headers, body, args))
                if args.history:
                    asyncio.run(seed_history(tenant_id, args.history))
                    label = f"dispatch, {args.history:,} jobs in the table"
                    results.append(measure(label, client, base, headers, body, args))
    finally:
        receiver.shutdown()
        asyncio.run(drop_queue())
        asyncio.run(drop_scratch_database())
    return results


def report(args: argparse.Namespace, results: list[Measure]) -> str:
    title = (
        f"**Dispatch** (no-op backend, one worker process, default poll delay; latencies over "
        f"{args.jobs} jobs submitted one at a time, jobs/s over {args.burst} submitted at once)"
    )
    rows = [
        [
            m.name,
            f"{m.start_p50:.1f}",
            f"{m.start_p99:.1f}",
            f"{m.webhook_p50:.1f}",
            f"{m.webhook_p99:.1f}",
            f"{m.jobs_per_s:.1f}",
        ]
        for m in results
    ]
    headers = [
        "run",
        "submit→start p50 ms",
        "p99 ms",
        "finish→webhook p50 ms",
        "p99 ms",
        "jobs/s",
    ]
    return f"{title}\n\n{markdown_table(headers, rows)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs for the latencies")
    parser.add_argument("--gap-ms", type=float, default=20, help="pause between those jobs")
    parser.add_argument("--burst", type=int, default=500, help="jobs for the throughput")
    parser.add_argument("--history", type=int, default=100_000, help="0: skip that variant")
    args = parse_args(parser, jobs=3, burst=5, history=500)
    print(report(args, run(args)))


if __name__ == "__main__":
    main()
