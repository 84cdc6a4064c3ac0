"""The worker's `/metrics` endpoint: a small HTTP/1.1 server on the worker's own event loop.

Why not prometheus_client's `start_http_server`: that serves from a thread, which cannot await
the worker's Redis pool to read the queue depth when scraped, and cannot be stopped with the
worker. This one runs on the worker's loop, reads the depth with the same async client, closes
in the worker's shutdown, and answers only `GET /metrics` (and `/healthz`), one request per
connection, with bounded reads and deadlines so a slow or hostile client cannot hold it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from relight.core import metrics

logger = logging.getLogger(__name__)

MAX_REQUEST_HEAD_BYTES = 8192
READ_TIMEOUT_S = 5.0


class MetricsServer:
    """Serves `metrics.render()` after running `before_scrape` (e.g. reading the queue depth)."""

    def __init__(
        self, host: str, port: int, before_scrape: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.before_scrape = before_scrape
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=MAX_REQUEST_HEAD_BYTES
        )
        logger.info("worker metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, content_type, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                if self.before_scrape is not None:
                    await self.before_scrape()
                status, content_type, body = "200 OK", metrics.CONTENT_TYPE_LATEST, metrics.render()
            elif path == "/healthz":
                status, content_type, body = "200 OK", "text/plain", b"ok\n"
            else:
                status, content_type, body = "404 Not Found", "text/plain", b"not found\n"
            head_out = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head_out if method == "HEAD" else head_out + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that went away or sent nonsense gets nothing more
        except Exception:
            logger.exception("metrics scrape failed")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
