"""The part the fake HTTP servers share: a real server on its own thread, started and stopped by
the test (`start()`/`stop()`, or `with`)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self


class QuietServer(ThreadingHTTPServer):
    """Clients that hang up early (timeouts under test) are expected, not errors to print."""

    def handle_error(self, request: object, client_address: object) -> None:
        return


class QuietServer6(QuietServer):
    address_family = socket.AF_INET6


class ThreadedServer:
    """A fake serves with `_listen(Handler)` (from its `__init__`); this runs it on a thread."""

    def _listen(
        self,
        handler: type[BaseHTTPRequestHandler],
        bind: str = "127.0.0.1",
        *,
        poll_interval: float = 0.5,
    ) -> None:
        """Bind `handler` to a free port on `bind` (IPv6 where it has a colon); `self.port`."""
        server_class = QuietServer6 if ":" in bind else QuietServer
        self._httpd = server_class((bind, 0), handler)
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
