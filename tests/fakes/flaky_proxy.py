"""A real HTTP proxy on 127.0.0.1 in front of a live api, which misbehaves from a script.

Requests are forwarded to `upstream` and the answer relayed, except where a `Fault` is queued
for the request's method and path: `Fault.answer(503, {"Retry-After": "1"})` answers in the
proxy's name without forwarding (a load balancer shedding load), `Fault.drop_after_forward()`
forwards, lets the api do the work, then hangs up without answering (a connection lost on the
way back). Every exchange is recorded (method, path, headers, the status relayed or "dropped").
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import httpx

from tests.fakes.server import ThreadedServer

# Not relayed: they describe one hop (the proxy recomputes the length, httpx decoded the body).
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
}


@dataclass(frozen=True)
class Fault:
    kind: str  # "answer" or "drop_after_forward"
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def answer(cls, status: int, headers: dict[str, str] | None = None) -> Fault:
        return cls("answer", status, headers or {})

    @classmethod
    def drop_after_forward(cls) -> Fault:
        return cls("drop_after_forward")


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    headers: dict[str, str]
    outcome: int | str  # the status the client got, or "dropped"


class FlakyProxy(ThreadedServer):
    """`url` for the client; `script(method, path, [Fault, …])`; `exchanges(method, path)`."""

    def __init__(self, upstream: str) -> None:
        self._lock = threading.Lock()
        self._faults: dict[tuple[str, str], deque[Fault]] = {}
        self._exchanges: list[Exchange] = []
        upstream_client = httpx.Client(base_url=upstream, timeout=120)
        self._upstream = upstream_client
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.partition("?")[0]
                headers = {name.lower(): value for name, value in self.headers.items()}
                fault = proxy._next_fault(self.command, path)
                if fault is not None and fault.kind == "answer":
                    proxy._record(Exchange(self.command, path, headers, fault.status))
                    self._answer(fault.status, fault.headers, b'{"error": "proxy fault"}')
                    return
                forwarded = {
                    name: value
                    for name, value in headers.items()
                    if name not in HOP_HEADERS and name != "host"
                }
                response = upstream_client.request(
                    self.command, self.path, content=body, headers=forwarded
                )
                if fault is not None:  # drop_after_forward: the api did the work; hang up
                    proxy._record(Exchange(self.command, path, headers, "dropped"))
                    self.close_connection = True
                    return
                proxy._record(Exchange(self.command, path, headers, response.status_code))
                relayed = {
                    name: value
                    for name, value in response.headers.items()
                    if name.lower() not in HOP_HEADERS
                }
                self._answer(response.status_code, relayed, response.content)

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            do_GET = _relay
            do_POST = _relay
            do_PUT = _relay
            do_PATCH = _relay

        self._listen(Handler, poll_interval=0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        super().stop()
        self._upstream.close()

    def script(self, method: str, path: str, faults: list[Fault]) -> None:
        with self._lock:
            self._faults.setdefault((method, path), deque()).extend(faults)

    def _next_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get((method, path))
            return queue.popleft() if queue else None

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self._exchanges.append(exchange)

    def exchanges(self, method: str | None = None, path: str | None = None) -> list[Exchange]:
        with self._lock:
            return [
                exchange
                for exchange in self._exchanges
                if (method is None or exchange.method == method)
                and (path is None or exchange.path == path)
            ]
