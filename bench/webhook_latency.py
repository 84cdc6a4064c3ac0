"""Completion-to-first-attempt latency of webhooks: from the commit that ends a request
(`finished_at` in the webhook body) to the receiver getting the first attempt.

Real `relight-api` and `relight-worker` processes, a receiver on 127.0.0.1 (allow-listed),
default requests on the `local` backend submitted one after another.

    .venv/bin/python bench/webhook_latency.py [--jobs 50]
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
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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

arrivals: dict[str, float] = {}
finished: dict[str, float] = {}


class Receiver(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return

    def do_POST(self) -> None:
        arrived = time.time()
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        request_id = body["request_id"]
        arrivals.setdefault(request_id, arrived)
        finished[request_id] = datetime.fromisoformat(body["finished_at"]).timestamp()
        self.send_response(204)
        self.end_headers()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    args = parse_args(parser, jobs=2)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    url = asyncio.run(create_scratch_database())
    key = asyncio.run(prepare(url))
    image = base64.b64encode((ROOT / "examples" / "chelsea.png").read_bytes()).decode()
    body = {"prompt": "cat", "subject_image": image, "webhook_url": hook}
    headers = {"x-api-key": key, "Prefer": "wait=60"}
    with tempfile.TemporaryDirectory() as scratch:
        env = bench_env(
            url,
            Path(scratch) / "storage",
            RELIGHT_EGRESS_ALLOWLIST="127.0.0.1",
        )
        with local_stack(env, Path(scratch) / "logs") as client:
            for _ in range(args.jobs + 1):  # the first is a warm-up
                response = client.post("/v2/ic-light", headers=headers, json=body)
                if response.status_code != 200:
                    raise SystemExit(f"job did not complete: {response.status_code}")
                request_id = response.json()["request_id"]
                deadline = time.monotonic() + 10
                while request_id not in arrivals and time.monotonic() < deadline:
                    time.sleep(0.001)
    receiver.shutdown()
    asyncio.run(drop_queue())
    asyncio.run(drop_scratch_database())
    latencies = [
        (arrivals[request_id] - finished[request_id]) * 1000 for request_id in list(arrivals)[1:]
    ]
    print(f"webhook completion-to-first-attempt, {len(latencies)} requests, local backend")
    print(f"{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    print(
        f"{statistics.median(latencies):>10.1f}{percentile(latencies, 0.9):>10.1f}"
        f"{percentile(latencies, 0.99):>10.1f}{max(latencies):>10.1f}"
    )


if __name__ == "__main__":
    main()
