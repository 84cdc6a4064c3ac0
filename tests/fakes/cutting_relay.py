"""A real TCP relay on 127.0.0.1 that drops long-lived streams, as a proxy or a network does.

Bytes are relayed as they come (unlike `FlakyProxy`, which reads whole answers), one request
per connection (the relay asks the upstream to close after answering). For the first `cuts`
requests whose path contains `cut_path`, the relay hangs up right after the first
Server-Sent Event of the answer. Every request's head is recorded (`heads`), so a test can see
what a reconnecting client sent (its `Last-Event-ID`).
"""

from __future__ import annotations

import socket
import socketserver
import threading
from types import TracebackType
from typing import Self

END_OF_HEAD = b"\r\n\r\n"


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        return  # clients hanging up mid-answer are the point


class CuttingRelay:
    """`url` for the client; `heads()`: the head of each request, in order."""

    def __init__(self, upstream: str, cut_path: str, cuts: int = 1) -> None:
        host, _, port = upstream.removeprefix("http://").rstrip("/").partition(":")
        self._upstream = (host, int(port))
        self._cut_path = cut_path.encode()
        self._cuts_left = cuts
        self._lock = threading.Lock()
        self._heads: list[str] = []
        relay = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                relay._relay(self.request)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def heads(self) -> list[str]:
        with self._lock:
            return list(self._heads)

    def _relay(self, client: socket.socket) -> None:
        received = b""
        while END_OF_HEAD not in received:
            chunk = client.recv(65536)
            if not chunk:
                return
            received += chunk
        head, _, rest = received.partition(END_OF_HEAD)
        cut = self._record(head)
        lines = [
            line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")
        ]
        with socket.create_connection(self._upstream) as upstream:
            upstream.sendall(b"\r\n".join([*lines, b"Connection: close"]) + END_OF_HEAD + rest)
            threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
            answered = b""
            while chunk := upstream.recv(65536):
                if not cut:
                    client.sendall(chunk)
                    continue
                answered += chunk
                end = _first_event_end(answered)
                if end is not None:
                    client.sendall(answered[:end])
                    break
        client.shutdown(socket.SHUT_RDWR)

    def _record(self, head: bytes) -> bool:
        """Record a request's head; whether its answer is to be cut."""
        request_line = head.split(b"\r\n", 1)[0]
        with self._lock:
            self._heads.append(head.decode("latin-1"))
            cut = self._cut_path in request_line and self._cuts_left > 0
            if cut:
                self._cuts_left -= 1
            return cut

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _first_event_end(answer: bytes) -> int | None:
    """Where the first event of an SSE answer ends (its blank line), or None if not yet in."""
    body_start = answer.find(END_OF_HEAD)
    if body_start < 0:
        return None
    event_end = answer.find(END_OF_HEAD, body_start + len(END_OF_HEAD))
    return None if event_end < 0 else event_end + len(END_OF_HEAD)


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Forward what the client sends after the head (a request body) to the upstream."""
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        return
