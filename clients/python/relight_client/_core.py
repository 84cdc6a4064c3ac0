"""The one core that `Relight` and `AsyncRelight` share (sans-I/O).

Every operation is a plain generator that *describes* its I/O: it yields `Call` (send this HTTP
request) and `Sleep` (wait this long), and `Emit` for values an iterator hands to the caller;
it receives the `httpx.Response` (or has the transport error thrown in) and returns its result.
Retries, waits, polling and pagination are written once here; `run_sync`/`run_async` and
`iterate_sync`/`iterate_async` are the only places that touch a socket or a clock, so the sync
and async clients cannot drift apart. A Server-Sent Events stream is two more steps: `Listen`
(a `Call` whose 2xx body is left open) and `NextEvent` (read the next event of it); the drivers
hold the one open stream and close it when the operation moves on or ends.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from httpx_sse import EventSource

from relight_client.errors import ConnectionFailedError, error_from_response, retry_after_of

T = TypeVar("T")
E = TypeVar("E")

RETRIED_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Call:
    """One HTTP request. `idempotent`: safe to send again after a dropped connection."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = True


@dataclass(frozen=True)
class Listen(Call):
    """Open a Server-Sent Events stream: the driver answers the response with its body unread
    when 2xx (read when an error, so that it can be raised). `read_timeout`: the longest
    silence (no event, no heartbeat) before the read fails with `httpx.ReadTimeout`."""

    read_timeout: float | None = None


@dataclass(frozen=True)
class NextEvent:
    """Read the next event of the stream `Listen` opened: an `Event`, or None at its end."""


@dataclass(frozen=True)
class Event:
    event: str
    data: str
    id: str


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Emit:
    value: Any


Step = Call | NextEvent | Sleep | Emit
# What an operation yields, what it is sent back (a response, or None after a sleep), its result.
Operation = Generator[Step, Any, T]


@dataclass(frozen=True)
class RetryPolicy:
    """429 and 503 are retried (after `Retry-After` when the server sends one, capped at
    `max_retry_after`); transport errors only for idempotent calls. Backoff: exponential with
    full jitter."""

    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    max_retry_after: float = 60.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))


def send(call: Call, policy: RetryPolicy) -> Operation[httpx.Response]:
    """Send `call`, retrying as the policy says; answer a 2xx (or 3xx) or raise `APIError`."""
    attempt = 0
    while True:
        try:
            response = yield call
        except httpx.TransportError as error:
            if not call.idempotent or attempt >= policy.max_retries:
                raise ConnectionFailedError(
                    f"{call.method} {call.path}: {type(error).__name__}: {error}", cause=error
                ) from error
            yield Sleep(policy.backoff(attempt))
            attempt += 1
            continue
        assert isinstance(response, httpx.Response)
        if response.status_code in RETRIED_STATUSES and attempt < policy.max_retries:
            retry_after = retry_after_of(response)
            if retry_after is None or retry_after <= policy.max_retry_after:
                yield Sleep(retry_after if retry_after is not None else policy.backoff(attempt))
                attempt += 1
                continue
        if response.status_code >= 400:
            raise error_from_response(response)
        return response


def json_of(response: httpx.Response) -> Any:
    return response.json()


def _request(client: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
    timeout = client.timeout
    if isinstance(call, Listen):
        timeout = httpx.Timeout(
            connect=timeout.connect, read=call.read_timeout, write=timeout.write, pool=timeout.pool
        )
    return client.build_request(
        call.method,
        call.path,
        params=call.params,
        json=call.json,
        headers=call.headers,
        timeout=timeout,
    )


class _SyncStream:
    """The open event stream of a blocking driver (at most one at a time)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.response: httpx.Response | None = None
        self.events: Iterator[Any] | None = None

    def open(self, call: Listen) -> httpx.Response:
        self.close()
        response = self.client.send(_request(self.client, call), stream=True)
        if response.status_code >= 300:
            response.read()
            response.close()
            return response
        self.response = response
        self.events = EventSource(response).iter_sse()
        return response

    def next(self) -> Event | None:
        if self.events is None:
            raise RuntimeError("NextEvent without an open stream")
        sse = next(self.events, None)
        return None if sse is None else Event(sse.event, sse.data, sse.id)

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
        self.response, self.events = None, None


class _AsyncStream:
    """`_SyncStream` for asyncio."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.response: httpx.Response | None = None
        self.events: AsyncIterator[Any] | None = None

    async def open(self, call: Listen) -> httpx.Response:
        await self.close()
        response = await self.client.send(_request(self.client, call), stream=True)
        if response.status_code >= 300:
            await response.aread()
            await response.aclose()
            return response
        self.response = response
        self.events = EventSource(response).aiter_sse()
        return response

    async def next(self) -> Event | None:
        if self.events is None:
            raise RuntimeError("NextEvent without an open stream")
        sse = await anext(self.events, None)
        return None if sse is None else Event(sse.event, sse.data, sse.id)

    async def close(self) -> None:
        if self.response is not None:
            await self.response.aclose()
        self.response, self.events = None, None


def iterate_sync(client: httpx.Client, operation: Operation[Any]) -> Iterator[Any]:
    """Drive an operation with blocking I/O, yielding what it emits."""
    to_send: Any = None
    to_throw: BaseException | None = None
    stream = _SyncStream(client)
    try:
        while True:
            try:
                step = operation.throw(to_throw) if to_throw else operation.send(to_send)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            to_send, to_throw = None, None
            if isinstance(step, Emit):
                yield step.value
            elif isinstance(step, Sleep):
                time.sleep(step.seconds)
            else:
                try:
                    if isinstance(step, Listen):
                        to_send = stream.open(step)
                    elif isinstance(step, NextEvent):
                        to_send = stream.next()
                    else:
                        to_send = client.send(_request(client, step))
                except httpx.TransportError as error:
                    to_throw = error
    finally:
        stream.close()
        operation.close()


def run_sync(client: httpx.Client, operation: Operation[T]) -> T:
    """Drive an operation that emits nothing to its result."""
    iterator = iterate_sync(client, operation)
    try:
        next(iterator)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    raise TypeError("run_sync: this operation emits values; iterate it instead")


async def iterate_async(client: httpx.AsyncClient, operation: Operation[Any]) -> AsyncIterator[Any]:
    """Drive an operation with asyncio, yielding what it emits."""
    to_send: Any = None
    to_throw: BaseException | None = None
    stream = _AsyncStream(client)
    try:
        while True:
            try:
                step = operation.throw(to_throw) if to_throw else operation.send(to_send)
            except StopIteration:
                return
            to_send, to_throw = None, None
            if isinstance(step, Emit):
                yield step.value
            elif isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
            else:
                try:
                    if isinstance(step, Listen):
                        to_send = await stream.open(step)
                    elif isinstance(step, NextEvent):
                        to_send = await stream.next()
                    else:
                        to_send = await client.send(_request(client, step))
                except httpx.TransportError as error:
                    to_throw = error
    finally:
        await stream.close()
        operation.close()


async def run_async(client: httpx.AsyncClient, operation: Operation[T]) -> T:
    """Drive an operation that emits nothing to its result (an async generator cannot return
    a value, so this loop is `iterate_async`'s twin rather than a wrapper)."""
    to_send: Any = None
    to_throw: BaseException | None = None
    while True:
        try:
            step = operation.throw(to_throw) if to_throw else operation.send(to_send)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        to_send, to_throw = None, None
        if isinstance(step, Listen | NextEvent):
            raise TypeError("run_async: event streams are read with iterate_async")
        if isinstance(step, Call):
            try:
                to_send = await client.send(_request(client, step))
            except httpx.TransportError as error:
                to_throw = error
        elif isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
        else:
            raise TypeError("run_async: this operation emits values; iterate it instead")
