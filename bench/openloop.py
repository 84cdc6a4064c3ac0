"""An open-loop load generator: sends requests at a fixed rate whatever the answers' latency
(wrk is closed-loop and has no rate option), and measures each latency from the moment the
request was *due*, so a stalled server is not hidden by a generator that waits for it.

A minimal HTTP/1.1 client over asyncio streams (keep-alive connections, one request at a time
on each, a new connection when none is idle), so that the generator stays cheap: with httpx's
pool every request cost milliseconds of CPU once a few dozen were in flight, the generator fell
behind its own schedule, and that lag was counted as the server's latency.

Runs in its own process; prints one JSON object: sent, ok, errors, achieved_rate,
latencies_ms.

    .venv/bin/python bench/openloop.py URL --rate 200 --count 2000 --body body.json \
        --header x-api-key=KEY

bench/submit.py runs it; `--smoke` sends 20 requests at 200/s to a stand-in server of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvloop

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.cli import parse_args  # noqa: E402

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# A connection idle this long is closed, not reused: servers close idle keep-alive connections
# (uvicorn after 5 s), and a request written to one the server just closed would fail.
MAX_IDLE_S = 2.0


class HttpError(Exception):
    """An answer this client cannot read (or the connection ended mid-answer)."""


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 answer; its status, and whether the connection can be reused."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HttpError(f"not an HTTP answer: {status_line!r}")
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip().lower()
    if fields.get("transfer-encoding") == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")  # after the last chunk (no trailers are sent to us)
    else:
        await reader.readexactly(int(fields.get("content-length", "0")))
    return int(parts[1]), fields.get("connection") != "close"


class Client:
    """POSTs one body to one URL over keep-alive connections."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise SystemExit(f"openloop: only http:// URLs, not {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {path} HTTP/1.1", f"host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"content-length: {len(body)}")
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        # Idle connections with the time each was last used, the most recent last.
        self.idle: list[tuple[Connection, float]] = []
        self.opened = 0

    async def _connection(self) -> Connection:
        now = time.monotonic()
        while self.idle:
            (reader, writer), used = self.idle.pop()
            if now - used < MAX_IDLE_S and not reader.at_eof():
                return reader, writer
            writer.close()
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    async def post(self) -> int:
        reader, writer = await self._connection()
        try:
            writer.write(self.request)
            status, reusable = await read_answer(reader)
        except BaseException:
            writer.close()
            raise
        if reusable:
            self.idle.append(((reader, writer), time.monotonic()))
        else:
            writer.close()
        return status

    def close(self) -> None:
        for (_, writer), _ in self.idle:
            writer.close()
        self.idle.clear()


async def fire(client: Client, due: float, latencies: list[float], errors: list[str]) -> None:
    try:
        status = await client.post()
    except (OSError, HttpError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        errors.append(type(exc).__name__)
        return
    latencies.append((time.perf_counter() - due) * 1000)
    if status >= 300:
        errors.append(str(status))


async def run(
    url: str, rate: float, count: int, body: bytes, headers: dict[str, str]
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    client = Client(url, body, headers)
    tasks = []
    start = time.perf_counter() + 0.05
    try:
        for index in range(count):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(fire(client, due, latencies, errors)))
        await asyncio.gather(*tasks)
    finally:
        client.close()
    elapsed = time.perf_counter() - start
    return {
        "sent": count,
        "ok": count - len(errors),
        "errors": errors[:20],
        "achieved_rate": count / elapsed,
        "connections": client.opened,
        "latencies_ms": latencies,
    }


async def _answer_202(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A stand-in server for `--smoke`: 202 to every request of a keep-alive connection."""
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}")
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def smoke(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    server = await asyncio.start_server(_answer_202, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        return await run(f"http://127.0.0.1:{port}/", 200, 20, body, headers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?")
    parser.add_argument("--rate", type=float, help="requests per second")
    parser.add_argument("--count", type=int, help="requests in all")
    parser.add_argument("--body", type=Path, help="a file with the JSON body")
    parser.add_argument("--header", action="append", default=[], help="NAME=VALUE")
    args = parse_args(parser)
    headers = {"content-type": "application/json"}
    headers |= dict(item.split("=", 1) for item in args.header)
    if args.smoke:
        result = uvloop.run(smoke(b"{}", headers))
        if result["ok"] != result["sent"]:
            raise SystemExit(f"openloop smoke: {result['errors']}")
    elif args.url is None or args.rate is None or args.count is None or args.body is None:
        parser.error("URL, --rate, --count and --body are required")
    else:
        body = args.body.read_bytes()
        result = uvloop.run(run(args.url, args.rate, args.count, body, headers))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
