"""A real TCP relay on 127.0.0.1 in front of Postgres that can lose an answer, as a network does.

Bytes go both ways as they come. Once `lose_answer_to(marker)` is armed, the next request whose
bytes hold `marker` (a value bound to a statement, say) is passed to the server, and the
server's answer to it is not passed on: the relay hangs up on both sides instead. The server
has then run the statement (in autocommit: committed it), and the client sees its connection
die before the answer: the outcome is the server's, the client cannot know it.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

CHUNK = 65536


class _Exchange:
    """One client connection's state: whether the server's next answer is to be lost."""

    lose_answer = False


class PgRelay:
    """`url(database)` for the client; `cuts`: how many answers were lost so far."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._marker: bytes | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.cuts = 0
        self.port = 0

    def url(self, database: str) -> str:
        """SQLAlchemy URL of `database` through the relay."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def lose_answer_to(self, marker: bytes) -> None:
        """Lose the server's answer to the next request that holds `marker` (once)."""
        self._marker = marker

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _relay(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        server_reader, server = await asyncio.open_connection(*self._upstream)
        self._writers |= {client, server}
        exchange = _Exchange()
        try:
            await asyncio.gather(
                self._requests(client_reader, server, exchange),
                self._answers(server_reader, client, exchange),
            )
        finally:
            for writer in (client, server):
                self._writers.discard(writer)
                writer.close()

    async def _requests(
        self, reader: asyncio.StreamReader, server: asyncio.StreamWriter, exchange: _Exchange
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(CHUNK):
                if self._marker is not None and self._marker in chunk:
                    self._marker = None
                    exchange.lose_answer = True
                server.write(chunk)
                await server.drain()
        server.close()  # the client hung up (or its side was closed): so does the server's

    async def _answers(
        self, reader: asyncio.StreamReader, client: asyncio.StreamWriter, exchange: _Exchange
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(CHUNK):
                if exchange.lose_answer:
                    self.cuts += 1
                    break
                client.write(chunk)
                await client.drain()
        client.close()  # closing the client's side ends `_requests` too
