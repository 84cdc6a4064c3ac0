"""The api under a real uvicorn on 127.0.0.1, and a raw client that streams a request until
the server answers (to see that it answered before it had everything)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scripts.stack import free_port


class BodyBytesRead:
    """Wraps an app and counts the body bytes the app read from the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.read = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.read += len(message.get("body", b""))
            return message

        await self.app(scope, counting_receive, send)


@contextlib.asynccontextmanager
async def serve(app: Any, **options: Any) -> AsyncIterator[int]:
    """`app` served by uvicorn (lifespan on) on a free port, for the block; the port."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn stopped before it started"
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await serving


@dataclass(frozen=True)
class Streamed:
    status: int
    answer: bytes
    sent: int  # bytes of the request sent before the answer came


async def stream_until_answered(
    port: int, head: bytes, piece: bytes, pieces: int, *, chunked: bool = False
) -> Streamed:
    """Send `head`, then up to `pieces` copies of `piece` (as chunks when `chunked`), stopping
    as soon as the server answers; the answer's status and how much was sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = len(head)
    answer = b""
    framed = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
    try:
        writer.write(head)
        await writer.drain()
        for _ in range(pieces):
            with contextlib.suppress(TimeoutError):
                answer = await asyncio.wait_for(reader.read(65536), 0.005)
            if answer:
                break
            writer.write(framed)
            await writer.drain()
            sent += len(framed)
    except (ConnectionResetError, BrokenPipeError):
        pass
    if not answer:
        answer = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return Streamed(status=status, answer=answer, sent=sent)
