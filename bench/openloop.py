"""An open-loop load generator: sends requests at a fixed rate whatever the answers' latency
(wrk is closed-loop and has no rate option), and measures each latency from the moment the
request was *due*, so a stalled server is not hidden by a generator that waits for it.

Runs in its own process; prints one JSON object: sent, ok, errors, latencies_ms.

    .venv/bin/python bench/openloop.py URL --rate 200 --count 2000 --body body.json \
        --header x-api-key=KEY
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import uvloop


async def fire(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    due: float,
    latencies: list[float],
    errors: list[str],
) -> None:
    try:
        response = await client.post(url, content=body)
    except httpx.HTTPError as exc:
        errors.append(type(exc).__name__)
        return
    latencies.append((time.perf_counter() - due) * 1000)
    if response.status_code >= 300:
        errors.append(str(response.status_code))


async def run(
    url: str, rate: float, count: int, body: bytes, headers: dict[str, str]
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    latencies: list[float] = []
    errors: list[str] = []
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        tasks = []
        start = time.perf_counter() + 0.05
        for index in range(count):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(fire(client, url, body, due, latencies, errors)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {
        "sent": count,
        "ok": count - len(errors),
        "errors": errors[:20],
        "achieved_rate": count / elapsed,
        "latencies_ms": latencies,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--count", type=int, required=True, help="requests in all")
    parser.add_argument("--body", type=Path, required=True, help="a file with the JSON body")
    parser.add_argument("--header", action="append", default=[], help="NAME=VALUE")
    args = parser.parse_args()
    headers = {"content-type": "application/json"}
    headers |= dict(item.split("=", 1) for item in args.header)
    result = uvloop.run(run(args.url, args.rate, args.count, args.body.read_bytes(), headers))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
