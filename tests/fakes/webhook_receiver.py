"""A real HTTP server on 127.0.0.1 (or ::1) that receives webhooks, records them and answers
from a script.

Every request is recorded (method, path, headers, raw body bytes, arrival time). Answers come
from a per-path queue of `Reply`s (status, headers such as `Retry-After` or `Location`, a delay
to play a receiver that hangs); once a path's queue is spent it answers 200.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.fakes.server import ThreadedServer


@dataclass(frozen=True)
class Reply:
    """One scripted answer. `delay_s` holds the answer back (a receiver that hangs)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay_s: float = 0.0


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it; header names are lower-cased."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    arrived_at: float  # time.monotonic()

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def signatures(self) -> list[str]:
        return self.headers["webhook-signature"].split(" ")


class WebhookReceiver(ThreadedServer):
    """`url(path)` to hand out, `script(path, [Reply, …])` to misbehave, `received(path)`."""

    def __init__(self, bind: str = "127.0.0.1") -> None:
        self.bind = bind
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Reply]] = {}
        self._received: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                reply = receiver._record_and_reply(
                    Received(
                        method=self.command,
                        path=path,
                        query=query,
                        headers={name.lower(): value for name, value in self.headers.items()},
                        body=body,
                        arrived_at=time.monotonic(),
                    )
                )
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(reply.body)
                self.close_connection = True

            do_POST = _handle
            do_GET = _handle

        self._listen(Handler, bind, poll_interval=0.05)

    def _record_and_reply(self, request: Received) -> Reply:
        with self._lock:
            self._received.append(request)
            queue = self._scripts.get(request.path)
            return queue.popleft() if queue else Reply()

    def url(self, path: str = "/hook", *, host: str | None = None) -> str:
        """`http://<host>:<port><path>`; `host` defaults to the bound address."""
        if host is None:
            host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}{path}"

    def script(self, path: str, replies: Iterable[Reply]) -> None:
        """Answer the next requests to `path` with `replies`, in order (then 200)."""
        with self._lock:
            self._scripts.setdefault(path, deque()).extend(replies)

    def received(self, path: str | None = None) -> list[Received]:
        """Requests so far, in arrival order (to `path`, or to any path)."""
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    async def wait_for(self, path: str, count: int, timeout_s: float = 10.0) -> list[Received]:
        """Wait until `path` has received at least `count` requests; those requests."""
        deadline = time.monotonic() + timeout_s
        while len(found := self.received(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} received {len(found)} requests, not {count}")
            await asyncio.sleep(0.02)
        return found
