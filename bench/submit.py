"""Submit throughput and latency: `POST /v2/ic-light` against its framework and I/O floors.

One server process (the real `create_app()` plus the bench-only floor routes of
`bench/floors.py`) on a scratch database and a queue of its own, no worker (jobs stay queued).
For each endpoint, wrk (closed loop, `--connections` connections, `--duration` s) gives
requests/s and p50/p99; then an open-loop generator (`bench/openloop.py`, its own process)
sends submits at a fixed `--rate` and gives their p50/p99. With `--history N` the submit
measures are repeated with N finished jobs already in the table.

The body is a default request whose subject is a URL (fetched by the worker, so submit stores
no file): the three endpoints do the same validation.

    .venv/bin/python bench/submit.py [--duration 10] [--connections 32] [--rate 200]
        [--rate-seconds 10] [--history 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

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
    percentile,
    seed_history,
)
from scripts.stack import free_port, running, wait_ready  # noqa: E402

BODY = {
    "prompt": "a cat on a sofa, warm window light",
    "subject_image": "https://images.example.com/cat.png",
    "seed": 42,
}
WRK = shutil.which("wrk") or "/usr/bin/wrk"
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass
class Measure:
    name: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def wrk(name: str, url: str, script: Path, connections: int, duration_s: float) -> Measure:
    """Run wrk against `url` (closed loop) and read its summary."""
    command = [
        WRK,
        f"-t{min(2, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if rate is None or p50 is None or p99 is None:
        raise SystemExit(f"could not read wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: .*", output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(0)))
    return Measure(name, float(rate.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), errors)


def open_loop(
    name: str, url: str, body: Path, headers: dict[str, str], rate: float, seconds: float
) -> Measure:
    """Send at a fixed rate from another process; latency counted from each request's due time."""
    count = max(1, round(rate * seconds))
    command = [sys.executable, str(ROOT / "bench" / "openloop.py"), url]
    command += ["--rate", str(rate), "--count", str(count), "--body", str(body)]
    for header, value in headers.items():
        command += ["--header", f"{header}={value}"]
    result = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
    latencies = result["latencies_ms"] or [float("nan")]
    return Measure(
        name,
        result["achieved_rate"],
        statistics.median(latencies),
        percentile(latencies, 0.99),
        result["sent"] - result["ok"],
    )


def wrk_script(path: Path, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(BODY))}"]
    lines.append('wrk.headers["Content-Type"] = "application/json"')
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(args: argparse.Namespace) -> tuple[list[Measure], list[Measure]]:
    url = asyncio.run(create_scratch_database())
    tenant_id, key = asyncio.run(create_bench_tenant())
    headers = {"x-api-key": key, "x-bench-tenant": str(tenant_id)}
    closed: list[Measure] = []
    fixed: list[Measure] = []
    try:
        with tempfile.TemporaryDirectory() as scratch_dir:
            scratch = Path(scratch_dir)
            script = wrk_script(scratch / "post.lua", headers)
            body = scratch / "body.json"
            body.write_text(json.dumps(BODY))
            port = free_port()
            env = bench_env(url, scratch / "storage")
            server = [sys.executable, str(ROOT / "bench" / "floors.py"), "--port", str(port)]
            base = f"http://127.0.0.1:{port}"
            with (
                running("floors", server, env, scratch / "logs") as process,
                httpx.Client(base_url=base, timeout=30) as client,
            ):
                wait_ready(client, process)
                targets = [
                    ("framework floor", "/bench/framework-floor"),
                    ("I/O floor", "/bench/io-floor"),
                    ("submit", "/v2/ic-light"),
                ]
                for name, path in targets:
                    wrk(name, base + path, script, args.connections, 1)  # warm-up
                    closed.append(wrk(name, base + path, script, args.connections, args.duration))
                submit_url = base + "/v2/ic-light"
                fixed.append(
                    open_loop("submit", submit_url, body, headers, args.rate, args.rate_seconds)
                )
                if args.history:
                    started = time.perf_counter()
                    asyncio.run(seed_history(tenant_id, args.history))
                    seeded_s = time.perf_counter() - started
                    print(f"seeded {args.history} finished jobs in {seeded_s:.1f} s", flush=True)
                    label = f"submit, {args.history:,} jobs in the table"
                    closed.append(wrk(label, submit_url, script, args.connections, args.duration))
                    fixed.append(
                        open_loop(label, submit_url, body, headers, args.rate, args.rate_seconds)
                    )
    finally:
        asyncio.run(drop_queue())
        asyncio.run(drop_scratch_database())
    return closed, fixed


def report(args: argparse.Namespace, closed: list[Measure], fixed: list[Measure]) -> str:
    io_floor = next(m for m in closed if m.name == "I/O floor")
    framework = next(m for m in closed if m.name == "framework floor")
    rows = [
        [
            m.name,
            f"{m.requests_per_s:,.0f}",
            f"{m.p50_ms:.1f}",
            f"{m.p99_ms:.1f}",
            f"{m.requests_per_s / framework.requests_per_s:.0%}",
            f"{m.requests_per_s / io_floor.requests_per_s:.0%}",
            str(m.errors),
        ]
        for m in closed
    ]
    title = (
        f"**Submit, closed loop** (wrk, {args.connections} connections, "
        f"{args.duration:g} s each, one server process)"
    )
    closed_table = markdown_table(
        ["endpoint", "req/s", "p50 ms", "p99 ms", "of framework", "of I/O floor", "errors"],
        rows,
    )
    fixed_rows = [
        [m.name, f"{m.requests_per_s:.0f}", f"{m.p50_ms:.1f}", f"{m.p99_ms:.1f}", str(m.errors)]
        for m in fixed
    ]
    fixed_title = (
        f"**Submit, open loop** ({args.rate:g} requests/s for {args.rate_seconds:g} s, "
        "latency from each request's due time)"
    )
    fixed_table = markdown_table(["endpoint", "req/s", "p50 ms", "p99 ms", "errors"], fixed_rows)
    return f"{title}\n\n{closed_table}\n\n{fixed_title}\n\n{fixed_table}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=200, help="open-loop requests/s")
    parser.add_argument("--rate-seconds", type=float, default=10)
    parser.add_argument("--history", type=int, default=100_000, help="0: skip that variant")
    args = parse_args(parser, duration=1, connections=4, rate=20, rate_seconds=0.5, history=500)
    if not Path(WRK).exists():
        raise SystemExit("wrk is not installed (make bench installs it: apt-get install wrk)")
    closed, fixed = run(args)
    print(report(args, closed, fixed))


if __name__ == "__main__":
    main()
