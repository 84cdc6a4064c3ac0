"""Soak: a steady mixed load for a stated time; memory and descriptors must come back to baseline.

Real `relight-api` (uvicorn) and `relight-worker` processes on a scratch database, the `local`
backend (the classic CPU engine) with small images so the worker keeps up, and two webhook
receivers on 127.0.0.1: a fast one and a slow one (answers after `SLOW_RECEIVER_S`). An open
loop starts `--rate` operations per second, drawn from `MIX`: v2 submits whose status is polled,
streamed (SSE, read to the end) or streamed and abandoned mid-way, v2 submits with a webhook to
either receiver, v2 submits canceled at once (409 when the job already finished is expected),
and v1 sync submits.

The api's and worker's RSS (VmRSS) and open descriptors are sampled after a warm-up (which
ends with `POOL_BURST` concurrent status reads, so the api's connection pools are open) once the
system is idle (start), halfway through the load (middle), and once the load has stopped and
everything has drained to idle (end); the descriptors that changed are listed by kind (Postgres,
Redis, accepted HTTP connections, pipes, files...). With `--tracemalloc` both processes run
under tracemalloc (`bench/traced.py`, much slower) and the allocation sites that grew most from
start to end are printed. Every accepted request must end in a terminal state,
every webhook be delivered, and each tenant's balance equal its ledger
(`relight.credits.service.audit_ledger`). Exits non-zero on any error (5xx, transport error,
unexpected 4xx), anything lost, or when the end is not back near the start: RSS at most
`RSS_TOLERANCE` above it or `RSS_SLACK_MIB` above it (the larger), descriptors other than pooled
connections at most `FD_SLACK` above it, and pooled connections (to Postgres and Redis) at most
the peak they reached during the load: a pool keeps the idle connections it opened at its
busiest moment (redis-py never closes them), a high-water mark rather than a leak.

    .venv/bin/python bench/soak.py [--duration 600] [--rate 5] [--tracemalloc] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli import parse_args  # noqa: E402
from bench.common import (  # noqa: E402
    DATABASE,
    DATABASE_URL,
    PG_SERVER,
    bench_env,
    create_bench_tenant,
    create_scratch_database,
    drop_queue,
    drop_scratch_database,
    markdown_table,
)
from scripts.stack import BIN, free_port, running, wait_ready  # noqa: E402

SLOW_RECEIVER_S = 3.0
RSS_TOLERANCE = 0.15
RSS_SLACK_MIB = 30.0
FD_SLACK = 10
TOP_GROWTH = 15
POOL_BURST = 32
POLL_INTERVAL_S = 0.25
FINISH_TIMEOUT_S = 120.0
TERMINAL = ("COMPLETED", "FAILED", "CANCELED")
# Operations and their weights (out of 20).
MIX = {
    "v2 + polls": 6,
    "v2 + stream": 3,
    "v2 + abandoned stream": 1,
    "v2 + fast webhook": 3,
    "v2 + slow webhook": 1,
    "v2 + cancel": 2,
    "v1 sync": 4,
}


STARTED = time.monotonic()


def progress(message: str) -> None:
    """A line on stderr, so that a ten-minute run shows where it is."""
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def small_subject() -> str:
    """The sample image scaled down to 192x240, PNG, base64."""
    with Image.open(ROOT / "examples" / "chelsea.png") as image:
        buffer = io.BytesIO()
        image.convert("RGB").resize((192, 240)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# --- webhook receivers -------------------------------------------------------------------------


class Receiver(ThreadingHTTPServer):
    """Records the request id of every webhook it is sent; answers 204 after `delay_s`."""

    daemon_threads = True

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.request_ids: set[str] = set()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), ReceiverHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        time.sleep(self.server.delay_s)
        with self.server.lock:
            self.server.request_ids.add(body["request_id"])
        self.send_response(204)
        self.end_headers()


@contextmanager
def receiving(delay_s: float) -> Iterator[Receiver]:
    receiver = Receiver(delay_s)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        receiver.server_close()


# --- the load -----------------------------------------------------------------------------------


@dataclass
class Load:
    """The operations of the mix, and what they sent, got accepted and saw go wrong."""

    client: httpx.AsyncClient
    keys: list[str]
    body: dict[str, object]
    fast: Receiver
    slow: Receiver
    sent: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    accepted: set[str] = field(default_factory=set)
    expected_webhooks: dict[str, set[str]] = field(
        default_factory=lambda: {"fast": set(), "slow": set()}
    )
    canceled: int = 0
    turn: int = 0

    def headers(self) -> dict[str, str]:
        self.turn += 1
        return {"x-api-key": self.keys[self.turn % len(self.keys)]}

    async def call(
        self,
        kind: str,
        method: str,
        path: str,
        expected: tuple[int, ...],
        headers: dict[str, str],
        body: dict[str, object] | None = None,
    ) -> httpx.Response | None:
        """One request, counted under `kind`; None (and an error) unless its status is expected."""
        self.sent[kind] += 1
        try:
            response = await self.client.request(method, path, headers=headers, json=body)
        except httpx.TransportError as exc:
            self.errors.append(f"{kind}: {exc!r}")
            return None
        if response.status_code not in expected:
            self.errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
            return None
        return response

    async def submit(self, headers: dict[str, str], **extra: object) -> str | None:
        body = {**self.body, **extra}
        response = await self.call(
            "submit v2", "POST", "/v2/ic-light", (202,), headers=headers, body=body
        )
        if response is None:
            return None
        request_id: str = response.json()["request_id"]
        self.accepted.add(request_id)
        return request_id

    async def polled(self) -> None:
        headers = self.headers()
        request_id = await self.submit(headers)
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while request_id and time.monotonic() < deadline:
            await asyncio.sleep(POLL_INTERVAL_S)
            path = f"/v2/requests/{request_id}/status"
            response = await self.call("status poll", "GET", path, (200,), headers=headers)
            if response is None or response.json()["status"] in TERMINAL:
                return
        if request_id:
            self.errors.append(f"polls: {request_id} not finished in {FINISH_TIMEOUT_S:g} s")

    async def streamed(self, abandon: bool = False) -> None:
        headers = self.headers()
        request_id = await self.submit(headers)
        if request_id is None:
            return
        kind = "status stream, abandoned" if abandon else "status stream"
        self.sent[kind] += 1
        path = f"/v2/requests/{request_id}/status/stream"
        try:
            async with self.client.stream("GET", path, headers=headers) as response:
                if response.status_code != 200:
                    self.errors.append(f"{kind}: {response.status_code}")
                    return
                events = []
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        events.append(line.split(":", 1)[1].strip())
                        if abandon:
                            return  # leaves mid-way: the connection closes under the server
                if not events or events[-1] != "done":
                    self.errors.append(f"{kind}: ended without its done event: {events}")
        except httpx.TransportError as exc:
            self.errors.append(f"{kind}: {exc!r}")

    async def with_webhook(self, receiver: str) -> None:
        url = (self.fast if receiver == "fast" else self.slow).url
        request_id = await self.submit(self.headers(), webhook_url=url)
        if request_id:
            self.expected_webhooks[receiver].add(request_id)

    async def canceled_at_once(self) -> None:
        headers = self.headers()
        request_id = await self.submit(headers)
        if request_id is None:
            return
        path = f"/v2/requests/{request_id}/cancel"
        # 409 not_cancelable: the worker finished it first, which is allowed.
        response = await self.call("cancel", "POST", path, (200, 409), headers=headers)
        if response is not None and response.status_code == 200:
            self.canceled += 1

    async def sync_v1(self) -> None:
        response = await self.call(
            "submit v1 (sync)",
            "POST",
            "/v1/ic-light",
            (200,),
            headers=self.headers(),
            body=self.body,
        )
        if response is not None:
            self.accepted.add(response.headers["x-request-id"])

    async def open_pools(self) -> None:
        """`POOL_BURST` status reads at once, so that the api's connection pools (Postgres: its
        fixed size; Redis: as many as the burst uses) are open before the baseline: a pool keeps
        its idle connections, and those it opens at a later peak are a high-water mark, not a
        leak."""
        headers = {"x-api-key": self.keys[0]}
        request_id = await self.submit(headers)
        path = f"/v2/requests/{request_id}/status"
        await asyncio.gather(
            *(self.call("status poll", "GET", path, (200,), headers) for _ in range(POOL_BURST))
        )

    def operation(self, name: str) -> Coroutine[Any, Any, None]:
        operations: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "v2 + polls": self.polled,
            "v2 + stream": self.streamed,
            "v2 + abandoned stream": lambda: self.streamed(abandon=True),
            "v2 + fast webhook": lambda: self.with_webhook("fast"),
            "v2 + slow webhook": lambda: self.with_webhook("slow"),
            "v2 + cancel": self.canceled_at_once,
            "v1 sync": self.sync_v1,
        }
        return operations[name]()

    async def run(
        self, seconds: float, rate: float, rng: random.Random, on_the_way: Callable[[float], None]
    ) -> float:
        """Start `rate` operations a second for `seconds` (open loop), then wait for them all;
        `on_the_way(elapsed)` is called about once a second. The rate achieved."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        pending: set[asyncio.Task[None]] = set()
        # Dealt from a shuffled deck of the mix: every 20 operations hold each kind its weight.
        deck: list[str] = []
        count = 0
        next_report = 1.0
        while (due := started + count / rate) < started + seconds:
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not deck:
                deck = [name for name, weight in MIX.items() for _ in range(weight)]
                rng.shuffle(deck)
            task = asyncio.create_task(self.operation(deck.pop()))
            pending.add(task)
            task.add_done_callback(pending.discard)
            count += 1
            if loop.time() - started >= next_report:
                on_the_way(loop.time() - started)
                next_report += 1.0
        achieved = count / (loop.time() - started)
        if pending:
            await asyncio.wait(pending, timeout=FINISH_TIMEOUT_S)
        for task in list(pending):
            task.cancel()
            self.errors.append("an operation did not finish after the load stopped")
        return achieved


# --- processes and the database -----------------------------------------------------------------


# Peers named in the descriptor breakdown, and TCP states other than ESTABLISHED worth seeing.
KNOWN_PORTS = {5432: "postgres", 6379: "redis"}
POOLED = ("tcp to postgres", "tcp to redis")
TCP_STATES = {"06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN"}


@dataclass
class Sample:
    rss_mib: float
    descriptors: int
    kinds: Counter[str] = field(default_factory=Counter)

    @property
    def pooled(self) -> int:
        """Connections to Postgres and Redis: what the processes' connection pools hold."""
        return sum(count for kind, count in self.kinds.items() if kind.startswith(POOLED))


def sockets(pid: int) -> dict[str, str]:
    """`socket:[inode]` → what the TCP socket is (its peer, or the port it listens on)."""
    tables = [Path(f"/proc/{pid}/net/{name}") for name in ("tcp", "tcp6")]
    rows = [line.split() for table in tables for line in table.read_text().splitlines()[1:]]
    listening = {int(row[1].rsplit(":", 1)[1], 16) for row in rows if row[3] == "0A"}
    named = {}
    for row in rows:
        local_port = int(row[1].rsplit(":", 1)[1], 16)
        remote_port = int(row[2].rsplit(":", 1)[1], 16)
        if row[3] == "0A":
            label = f"tcp listening on :{local_port}"
        elif local_port in listening:
            label = f"tcp accepted on :{local_port}"
        else:
            label = f"tcp to {KNOWN_PORTS.get(remote_port, 'another port')}"
        if row[3] in TCP_STATES and row[3] != "0A":
            label += f" ({TCP_STATES[row[3]]})"
        named[f"socket:[{row[9]}]"] = label
    return named


def brief(samples: dict[str, Sample]) -> str:
    return ", ".join(
        f"{name} {each.rss_mib:.1f} MiB {each.descriptors} fds" for name, each in samples.items()
    )


def sample(pid: int) -> Sample:
    """`pid`'s resident memory (VmRSS), open descriptors, and those by kind."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = next(
        int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
    )
    named = sockets(pid)
    kinds: Counter[str] = Counter()
    for descriptor in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{descriptor}")
        except FileNotFoundError:  # closed since the listing
            continue
        kinds[named.get(target, target.split(":[")[0] if ":[" in target else target)] += 1
    return Sample(rss_kib / 1024, sum(kinds.values()), kinds)


async def drain(timeout_s: float) -> None:
    """Wait until no job is queued or running and no webhook is pending."""
    connection = await asyncpg.connect(f"{PG_SERVER}/{DATABASE}")
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            unfinished = await connection.fetchval(
                "SELECT (SELECT count(*) FROM job WHERE status IN ('queued', 'running'))"
                " + (SELECT count(*) FROM webhook_delivery WHERE status = 'pending')"
            )
            if unfinished == 0:
                return
            await asyncio.sleep(0.5)
    finally:
        await connection.close()


async def lost(load: Load) -> list[str]:
    """Accepted requests not terminal, webhooks not delivered, balances off their ledgers."""
    from relight.core.config import Settings
    from relight.core.db import create_engine, create_sessionmaker
    from relight.credits.service import audit_ledger

    problems: list[str] = []
    connection = await asyncpg.connect(f"{PG_SERVER}/{DATABASE}")
    try:
        rows = await connection.fetch("SELECT id::text AS id, status FROM job")
        undelivered = await connection.fetchval(
            "SELECT count(*) FROM webhook_delivery WHERE status <> 'delivered'"
        )
    finally:
        await connection.close()
    statuses = {row["id"]: row["status"] for row in rows}
    for request_id in sorted(load.accepted):
        status = statuses.get(request_id)
        if status not in ("succeeded", "failed", "canceled"):
            problems.append(f"request {request_id} accepted, now {status or 'missing'}")
    problems += [
        f"request {request_id} never finished ({status})"
        for request_id, status in statuses.items()
        if status in ("queued", "running") and request_id not in load.accepted
    ]
    if undelivered:
        problems.append(f"{undelivered} webhook deliveries not delivered")
    for name, receiver in (("fast", load.fast), ("slow", load.slow)):
        with receiver.lock:
            missing = load.expected_webhooks[name] - receiver.request_ids
        problems += [f"the {name} receiver never got {request_id}" for request_id in missing]
    engine = create_engine(Settings(database_url=DATABASE_URL), pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session:
            problems += [
                f"tenant {row.tenant_name}: balance {row.balance} != ledger {row.ledger_sum}"
                for row in await audit_ledger(session)
            ]
    finally:
        await engine.dispose()
    return problems


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    load: Load
    moments: dict[str, dict[str, Sample]]
    trend: list[tuple[float, dict[str, Sample]]]
    peak_pooled: dict[str, int]
    operations_per_s: float
    problems: list[str]


async def idle(
    pids: dict[str, int], settle_s: float, snapshots: dict[str, Path] | None
) -> dict[str, Sample]:
    """Each process's sample once everything has drained and `settle_s` more have passed (idle
    keep-alive connections time out after 5 s on either side); then, under `--tracemalloc`,
    each process's allocation snapshot (`bench/traced.py`)."""
    await drain(FINISH_TIMEOUT_S * 2)
    await asyncio.sleep(settle_s)
    samples = {name: sample(pid) for name, pid in pids.items()}
    for name, folder in (snapshots or {}).items():
        taken = len(list(folder.glob("*.done")))
        os.kill(pids[name], signal.SIGUSR1)
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while not (folder / f"{taken + 1}.done").exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"the {name} process wrote no allocation snapshot")
            await asyncio.sleep(0.2)
    return samples


def growth(snapshots: dict[str, Path]) -> str:
    """Each process's allocation sites that grew most from the first snapshot to the last."""
    lines = []
    for name, folder in snapshots.items():
        first, last = (tracemalloc.Snapshot.load(str(folder / f"{n}.snapshot")) for n in (1, 2))
        lines.append(f"{name}: allocations that grew most from start to end (tracemalloc)")
        lines += [f"  {stat}" for stat in last.compare_to(first, "lineno")[:TOP_GROWTH]]
    return "\n".join(lines)


async def exercise(
    args: argparse.Namespace,
    base_url: str,
    keys: list[str],
    pids: dict[str, int],
    fast: Receiver,
    slow: Receiver,
    snapshots: dict[str, Path] | None,
) -> Outcome:
    body = {
        "prompt": "cat, soft window light",
        "subject_image": small_subject(),
        "width": 256,
        "height": 256,
        "highres_scale": 1.0,
        "output_format": "jpg",
        "seed": 7,
    }
    rng = random.Random(20261207)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    moments: dict[str, dict[str, Sample]] = {}
    trend: list[tuple[float, dict[str, Sample]]] = []
    async with httpx.AsyncClient(
        base_url=base_url, timeout=FINISH_TIMEOUT_S, limits=limits
    ) as client:
        load = Load(client, keys, body, fast, slow)
        progress(f"warm-up: {args.warmup:g} s")
        await load.run(args.warmup, args.rate, rng, lambda _: None)
        await load.open_pools()
    progress("draining")
    moments["start"] = await idle(pids, args.settle, snapshots)
    progress(f"start: {brief(moments['start'])}; load: {args.duration:g} s at {args.rate:g}/s")
    load.sent = Counter()
    every = max(1.0, args.duration / 10)

    peak_pooled = {name: each.pooled for name, each in moments["start"].items()}

    def on_the_way(elapsed: float) -> None:
        for name, pid in pids.items():
            peak_pooled[name] = max(peak_pooled[name], sample(pid).pooled)
        if "middle" not in moments and elapsed >= args.duration / 2:
            moments["middle"] = {name: sample(pid) for name, pid in pids.items()}
        if elapsed >= every * (len(trend) + 1):
            trend.append((elapsed, {name: sample(pid) for name, pid in pids.items()}))
            progress(f"{elapsed:.0f} s: {brief(trend[-1][1])}, errors {len(load.errors)}")

    async with httpx.AsyncClient(
        base_url=base_url, timeout=FINISH_TIMEOUT_S, limits=limits
    ) as client:
        load.client = client
        operations_per_s = await load.run(args.duration, args.rate, rng, on_the_way)
    progress("load stopped; draining")
    moments["end"] = await idle(pids, args.settle, snapshots)
    progress(f"end: {brief(moments['end'])}")
    return Outcome(load, moments, trend, peak_pooled, operations_per_s, await lost(load))


def within(start: Sample, end: Sample, peak_pooled: int) -> tuple[bool, bool, bool]:
    """Whether the end's RSS, descriptors (pooled connections aside) and pooled connections are
    back near the start's. A pool keeps the idle connections it opened at its busiest (redis-py
    never closes them), so its bound is the most it held during the load, not the start."""
    rss_limit = start.rss_mib + max(start.rss_mib * RSS_TOLERANCE, RSS_SLACK_MIB)
    others_ok = end.descriptors - end.pooled <= start.descriptors - start.pooled + FD_SLACK
    return end.rss_mib <= rss_limit, others_ok, end.pooled <= max(start.pooled, peak_pooled)


def report(args: argparse.Namespace, outcome: Outcome) -> tuple[str, bool]:
    """The tables, and whether everything came back flat with nothing lost or failed."""
    rows = []
    flat = True
    for process in ("api", "worker"):
        start, middle, end = (outcome.moments[m][process] for m in ("start", "middle", "end"))
        peak = outcome.peak_pooled[process]
        rss_ok, fds_ok, pooled_ok = within(start, end, peak)
        flat = flat and rss_ok and fds_ok and pooled_ok
        rows.append(
            [
                f"{process} RSS MiB",
                f"{start.rss_mib:.1f}",
                f"{middle.rss_mib:.1f}",
                f"{end.rss_mib:.1f}",
                f"{end.rss_mib - start.rss_mib:+.1f}",
                "ok" if rss_ok else "GREW",
            ]
        )
        rows.append(
            [
                f"{process} open descriptors",
                str(start.descriptors),
                str(middle.descriptors),
                str(end.descriptors),
                f"{end.descriptors - start.descriptors:+d}",
                "ok" if fds_ok else "GREW",
            ]
        )
        rows.append(
            [
                "  of which pooled (Postgres, Redis)",
                str(start.pooled),
                str(middle.pooled),
                str(end.pooled),
                f"{end.pooled - start.pooled:+d}",
                f"ok (peak {peak})" if pooled_ok else f"GREW (peak {peak})",
            ]
        )
    title = (
        f"**Soak** ({args.duration:g} s at {args.rate:g} operations/s "
        f"({outcome.operations_per_s:.2f} achieved), `local` backend, 256x256 jpg; start: "
        f"idle after a {args.warmup:g} s warm-up; end: idle after the load, "
        f"+{args.settle:g} s)"
    )
    table = markdown_table(["", "start", "middle", "end", "end − start", "flat"], rows)
    load = outcome.load
    sent_rows = [[kind, f"{count:,}"] for kind, count in sorted(load.sent.items())]
    sent_rows.append(["**all requests**", f"{sum(load.sent.values()):,}"])
    sent = markdown_table(["requests sent", "count"], sent_rows)
    webhooks = {name: len(ids) for name, ids in load.expected_webhooks.items()}
    summary = (
        f"errors: {len(load.errors)}; lost: {len(outcome.problems)} (requests accepted: "
        f"{len(load.accepted):,}, cancels that won: {load.canceled}, webhooks expected: fast "
        f"{webhooks['fast']}, slow {webhooks['slow']}; these three include the warm-up's)"
    )
    trend = "api RSS MiB over the load: " + ", ".join(
        f"{elapsed:.0f} s {samples['api'].rss_mib:.1f}" for elapsed, samples in outcome.trend
    )
    trend += "\nworker RSS MiB over the load: " + ", ".join(
        f"{elapsed:.0f} s {samples['worker'].rss_mib:.1f}" for elapsed, samples in outcome.trend
    )
    tolerance = (
        f"flat: RSS at most +{RSS_TOLERANCE:.0%} or +{RSS_SLACK_MIB:g} MiB (the larger), "
        f"descriptors other than pooled connections at most +{FD_SLACK}, and pooled "
        "connections at most the peak they reached during the load (sampled each second)"
    )
    for process in ("api", "worker"):
        before, after = (outcome.moments[m][process].kinds for m in ("start", "end"))
        changed = sorted(kind for kind in before | after if before[kind] != after[kind])
        breakdown = ", ".join(f"{kind} {before[kind]} → {after[kind]}" for kind in changed)
        trend += f"\n{process} descriptors that changed, start → end: {breakdown or 'none'}"
    details = "\n".join(f"  {line}" for line in (load.errors + outcome.problems)[:20])
    text = f"{title}\n\n{table}\n\n{sent}\n\n{summary}\n{tolerance}\n{trend}"
    if details:
        text += f"\nfirst errors and losses:\n{details}"
    return text, flat and not load.errors and not outcome.problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of load")
    parser.add_argument("--rate", type=float, default=5, help="operations started per second")
    parser.add_argument("--warmup", type=float, default=30, help="seconds of load before start")
    parser.add_argument("--settle", type=float, default=10, help="idle seconds before sampling")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="run both processes under tracemalloc (slower) and print what grew most",
    )
    args = parse_args(parser, duration=4, warmup=1, settle=1)
    asyncio.run(create_scratch_database())
    keys = [asyncio.run(create_bench_tenant(name))[1] for name in ("soak-a", "soak-b")]
    try:
        with (
            tempfile.TemporaryDirectory() as scratch_dir,
            receiving(0.0) as fast,
            receiving(SLOW_RECEIVER_S) as slow,
        ):
            scratch = Path(scratch_dir)
            port = free_port()
            env = bench_env(
                DATABASE_URL,
                scratch / "storage",
                RELIGHT_EGRESS_ALLOWLIST="127.0.0.1",
                RELIGHT_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
                RELIGHT_WORKER_METRICS_PORT=str(free_port()),
            )
            api_command = [str(BIN / "relight-api"), "--port", str(port)]
            worker_command = [str(BIN / "relight-worker")]
            snapshots = None
            if args.tracemalloc:
                snapshots = {name: scratch / "snapshots" / name for name in ("api", "worker")}
                traced = [sys.executable, str(ROOT / "bench" / "traced.py")]
                api_command = [*traced, "api.main:main", str(snapshots["api"]), *api_command[1:]]
                worker_command = [*traced, "worker.main:main", str(snapshots["worker"])]
            with (
                running("api", api_command, env, scratch / "logs") as api,
                running("worker", worker_command, env, scratch / "logs") as worker,
                httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
            ):
                wait_ready(client, api)
                progress("api ready")
                pids = {"api": api.pid, "worker": worker.pid}
                base_url = f"http://127.0.0.1:{port}"
                outcome = asyncio.run(exercise(args, base_url, keys, pids, fast, slow, snapshots))
            grown = growth(snapshots) if snapshots else ""
        progress("stopped")
    finally:
        asyncio.run(drop_queue())
        asyncio.run(drop_scratch_database())
    progress("database dropped")
    text, passed = report(args, outcome)
    print(f"{text}\n{grown}" if grown else text)
    if not passed:
        raise SystemExit("soak failed: see the errors, losses or growth above")


if __name__ == "__main__":
    main()
