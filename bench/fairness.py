"""Fair turns between tenants: how long one tenant's job waits behind another's backlog.

A real `relight-api` and one worker process (`bench/noop_worker.py`, one job at a time, each
job taking `--job-ms`) on a scratch database and a queue of their own. Tenant A submits
`--backlog` jobs at once, then tenant B submits one; measured from the job rows: B's
submit→start (`created_at` → `started_at`) and how many of A's jobs started before it. Then
dispatch throughput: jobs/s one worker (default concurrency, no-op backend) completes with
`--burst` jobs submitted at once. Each measure runs with fair dispatch off (arq's global due
order, as before) and on (`RELIGHT_FAIR_DISPATCH`), in the same run.

Then weighted turns: tenant H (weight `--weight`) and tenant L (weight 1) each queue
`--weighted-jobs` jobs before one worker (one slot) starts; measured from the start order: how
many of H's and of L's jobs started while both still had jobs queued.

    .venv/bin/python bench/fairness.py [--backlog 200] [--job-ms 50] [--burst 500]
        [--weighted-jobs 60] [--weight 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

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
    sql,
)
from bench.dispatch import job_times, submit_many  # noqa: E402
from bench.noop_worker import tiny_png  # noqa: E402
from scripts.stack import BIN, free_port, running, wait_ready  # noqa: E402


@dataclass
class Measure:
    mode: str
    b_start_ms: float
    a_started_before_b: int
    jobs_per_s: float


@dataclass
class WeightedMeasure:
    heavy_started: int
    light_started: int


def wait_done(ids: list[str], timeout_s: float) -> list[asyncpg.Record]:
    """Wait until every job succeeded; their rows."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = asyncio.run(job_times(ids))
        if len(rows) == len(ids) and all(row["status"] == "succeeded" for row in rows):
            return rows
        if time.monotonic() > deadline:
            raise SystemExit(f"jobs did not succeed within {timeout_s:g} s")
        time.sleep(0.2)


def measure(
    mode: str,
    fair: bool,
    base: str,
    keys: tuple[str, str],
    body: dict[str, object],
    env: dict[str, str],
    logs: Path,
    args: argparse.Namespace,
) -> Measure:
    key_a, key_b = keys
    setting = {"RELIGHT_FAIR_DISPATCH": "true" if fair else "false"}
    one_slot = {**env, **setting, "RELIGHT_WORKER_CONCURRENCY": "1"}
    worker = [sys.executable, str(ROOT / "bench" / "noop_worker.py"), "--job-ms", str(args.job_ms)]
    with running(f"worker-{mode}-latency", worker, one_slot, logs):
        backlog = asyncio.run(submit_many(base, {"x-api-key": key_a}, body, args.backlog))
        single = asyncio.run(submit_many(base, {"x-api-key": key_b}, body, 1))
        timeout = 60 + args.backlog * args.job_ms / 1000 * 3
        rows = wait_done([*backlog, *single], timeout)
    b_row = next(row for row in rows if row["id"] == single[0])
    b_start_ms = (b_row["started_at"] - b_row["created_at"]).total_seconds() * 1000
    before = sum(1 for row in rows if row["started_at"] < b_row["started_at"])
    # Throughput: the default concurrency and a backend that takes no time.
    throughput = [sys.executable, str(ROOT / "bench" / "noop_worker.py")]
    with running(f"worker-{mode}-throughput", throughput, {**env, **setting}, logs):
        burst = asyncio.run(submit_many(base, {"x-api-key": key_a}, body, args.burst))
        done = wait_done(burst, 300)
    first = min(row["created_at"] for row in done)
    last = max(row["finished_at"] for row in done)
    jobs_per_s = len(done) / max(1e-3, (last - first).total_seconds())
    return Measure(mode, b_start_ms, before, jobs_per_s)


def measure_weighted(
    base: str,
    keys: tuple[str, str],
    body: dict[str, object],
    env: dict[str, str],
    logs: Path,
    args: argparse.Namespace,
) -> WeightedMeasure:
    """H (weight `--weight`) and L (weight 1) queue their jobs, then one worker with one slot
    runs them: how many of each started while both had jobs queued."""
    key_heavy, key_light = keys
    heavy = asyncio.run(submit_many(base, {"x-api-key": key_heavy}, body, args.weighted_jobs))
    light = asyncio.run(submit_many(base, {"x-api-key": key_light}, body, args.weighted_jobs))
    one_slot = {**env, "RELIGHT_FAIR_DISPATCH": "true", "RELIGHT_WORKER_CONCURRENCY": "1"}
    worker = [sys.executable, str(ROOT / "bench" / "noop_worker.py"), "--job-ms", str(args.job_ms)]
    with running("worker-weighted", worker, one_slot, logs):
        timeout = 60 + 2 * args.weighted_jobs * args.job_ms / 1000 * 3
        rows = wait_done([*heavy, *light], timeout)
    heavy_ids = set(heavy)
    order = [row["id"] in heavy_ids for row in sorted(rows, key=lambda row: row["started_at"])]
    # Both had jobs queued until the last job of one of them started.
    last = {queued_by_heavy: index for index, queued_by_heavy in enumerate(order)}
    both_waiting = order[: min(last.values()) + 1]
    return WeightedMeasure(sum(both_waiting), len(both_waiting) - sum(both_waiting))


def run(args: argparse.Namespace) -> tuple[list[Measure], WeightedMeasure]:
    url = asyncio.run(create_scratch_database())
    _, key_a = asyncio.run(create_bench_tenant("tenant-a"))
    _, key_b = asyncio.run(create_bench_tenant("tenant-b"))
    heavy_id, key_heavy = asyncio.run(create_bench_tenant("tenant-h"))
    _, key_light = asyncio.run(create_bench_tenant("tenant-l"))
    # Set before the API starts; each submit then tells the workers (relight/jobs/queue.py).
    asyncio.run(sql(f"UPDATE tenant SET weight = {args.weight} WHERE id = '{heavy_id}'"))
    body: dict[str, object] = {
        "prompt": "noop",
        "subject_image": base64.b64encode(tiny_png()).decode(),
    }
    results = []
    try:
        with tempfile.TemporaryDirectory() as scratch_dir:
            scratch = Path(scratch_dir)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            env = bench_env(url, scratch / "storage", RELIGHT_PUBLIC_BASE_URL=base)
            api = [str(BIN / "relight-api"), "--port", str(port)]
            with (
                running("api", api, env, scratch / "logs") as api_process,
                httpx.Client(base_url=base, timeout=60) as client,
            ):
                wait_ready(client, api_process)
                for mode, fair in (("FIFO (before)", False), ("fair turns", True)):
                    results.append(
                        measure(mode, fair, base, (key_a, key_b), body, env, scratch, args)
                    )
                weighted = measure_weighted(base, (key_heavy, key_light), body, env, scratch, args)
    finally:
        asyncio.run(drop_queue())
        asyncio.run(drop_scratch_database())
    return results, weighted


def report(args: argparse.Namespace, results: list[Measure], weighted: WeightedMeasure) -> str:
    title = (
        f"**Fairness** (one worker, one job at a time, {args.job_ms:g} ms per job; tenant A "
        f"submits {args.backlog} jobs at once, then tenant B one; jobs/s: no-op backend, default "
        f"concurrency, {args.burst} jobs at once)"
    )
    rows = [
        [
            m.mode,
            f"{m.b_start_ms:.0f}",
            f"{m.b_start_ms / args.job_ms:.1f}",
            str(m.a_started_before_b),
            f"{m.jobs_per_s:.1f}",
        ]
        for m in results
    ]
    headers = [
        "dispatch",
        "B submit→start ms",
        "in job durations",
        "A's jobs started before B",
        "dispatch jobs/s",
    ]
    share = weighted.heavy_started / max(1, weighted.light_started)
    # A sentence, not a table: the table above is the one the bench's smoke test reads.
    weighted_line = (
        f"**Weighted turns** (the same worker; tenants H, weight {args.weight}, and L, weight 1, "
        f"each queue {args.weighted_jobs} jobs before it starts): while both had jobs queued, "
        f"H started {weighted.heavy_started} and L {weighted.light_started}, {share:.2f} of H's "
        f"for each of L's."
    )
    return f"{title}\n\n{markdown_table(headers, rows)}\n\n{weighted_line}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=200, help="tenant A's jobs")
    parser.add_argument("--job-ms", type=float, default=50, help="how long each job takes")
    parser.add_argument("--burst", type=int, default=500, help="jobs for the throughput")
    parser.add_argument("--weighted-jobs", type=int, default=60, help="jobs of H and of L each")
    parser.add_argument("--weight", type=int, default=3, help="tenant H's weight (L's is 1)")
    args = parse_args(parser, backlog=5, job_ms=20, burst=5, weighted_jobs=4)
    print(report(args, *run(args)))


if __name__ == "__main__":
    main()
