"""`Relight` and `AsyncRelight`: thin shells that run the shared operations (`_operations`)
over a blocking or an asyncio `httpx` client."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from relight_client._core import (
    Operation,
    RetryPolicy,
    iterate_async,
    iterate_sync,
    run_async,
    run_sync,
)
from relight_client._operations import (
    CancelAfter,
    ImageInput,
    Operations,
    key_changes,
    key_options,
    usage_params,
)
from relight_client.models import (
    Accepted,
    Account,
    Batch,
    BatchAccepted,
    BatchSummary,
    Key,
    NewKey,
    Record,
    RequestStatus,
    Status,
    UsageReport,
    WebhookDelivery,
    WebhookSecret,
)

__version__ = "0.1.0"
T = TypeVar("T")
# A request's or a batch's webhook deliveries (named here: `Requests.list` hides the builtin).
Deliveries = list[WebhookDelivery]
DEFAULT_TIMEOUT = httpx.Timeout(90.0, connect=10.0)  # above Prefer: wait's 60 s


def _headers(api_key: str) -> dict[str, str]:
    return {"x-api-key": api_key, "user-agent": f"relight-python/{__version__}"}


class RelightRequest:
    """A submitted request: wait for it, follow it, cancel it, download its images."""

    def __init__(
        self, client: Relight, request_id: str, submitted: Accepted | Record | None = None
    ) -> None:
        self._client = client
        self.id = request_id
        #: The submit's 202 answer (credits reserved, URLs), unless it answered finished.
        self.accepted = submitted if isinstance(submitted, Accepted) else None
        #: The final record, once known (the submit's `Prefer: wait` may already have seen it).
        self.record = submitted if isinstance(submitted, Record) else None

    def __repr__(self) -> str:
        return f"RelightRequest({self.id!r})"

    def status(self) -> RequestStatus:
        return self._client._run(self._client._ops.status(self.id))

    def get(self) -> Record:
        return self._client._run(self._client._ops.get(self.id))

    def wait(self, timeout: float | None = 600, poll_interval: float = 1.0) -> Record:
        """The final record (COMPLETED, FAILED or CANCELED); `WaitTimeoutError` after `timeout`."""
        if self.record is None or not self.record.status.is_terminal:
            operation = self._client._ops.wait(self.id, timeout=timeout, interval=poll_interval)
            self.record = self._client._run(operation)
        return self.record

    def stream(
        self, timeout: float | None = 600, poll_interval: float = 0.5
    ) -> Iterator[RequestStatus]:
        """Each change of status, queue position or progress, until a terminal status: read
        from the server's status stream (Server-Sent Events); `poll_interval` is used only with
        a server that has no stream."""
        operation = self._client._ops.follow(self.id, timeout=timeout, interval=poll_interval)
        return iterate_sync(self._client._http, operation)

    def cancel(self) -> Record:
        self.record = self._client._run(self._client._ops.cancel(self.id))
        return self.record

    def download(self, directory: str | os.PathLike[str] = ".") -> list[Path]:
        return self._client._run(self._client._ops.download(self.id, Path(directory)))


class AsyncRelightRequest:
    """`RelightRequest` for `AsyncRelight`: the same methods, awaited."""

    def __init__(
        self, client: AsyncRelight, request_id: str, submitted: Accepted | Record | None = None
    ) -> None:
        self._client = client
        self.id = request_id
        self.accepted = submitted if isinstance(submitted, Accepted) else None
        self.record = submitted if isinstance(submitted, Record) else None

    def __repr__(self) -> str:
        return f"AsyncRelightRequest({self.id!r})"

    async def status(self) -> RequestStatus:
        return await self._client._run(self._client._ops.status(self.id))

    async def get(self) -> Record:
        return await self._client._run(self._client._ops.get(self.id))

    # `timeout` bounds the polling and raises a resumable WaitTimeoutError, unlike
    # asyncio.timeout, which would cancel mid-request.
    async def wait(self, timeout: float | None = 600, poll_interval: float = 1.0) -> Record:  # noqa: ASYNC109
        if self.record is None or not self.record.status.is_terminal:
            operation = self._client._ops.wait(self.id, timeout=timeout, interval=poll_interval)
            self.record = await self._client._run(operation)
        return self.record

    def stream(
        self, timeout: float | None = 600, poll_interval: float = 0.5
    ) -> AsyncIterator[RequestStatus]:
        operation = self._client._ops.follow(self.id, timeout=timeout, interval=poll_interval)
        return iterate_async(self._client._http, operation)

    async def cancel(self) -> Record:
        self.record = await self._client._run(self._client._ops.cancel(self.id))
        return self.record

    async def download(self, directory: str | os.PathLike[str] = ".") -> list[Path]:
        return await self._client._run(self._client._ops.download(self.id, Path(directory)))


class Requests:
    """`client.requests`: this tenant's requests by id, and the listing."""

    def __init__(self, client: Relight) -> None:
        self._client = client

    def get(self, request_id: str) -> Record:
        return self._client._run(self._client._ops.get(request_id))

    def status(self, request_id: str) -> RequestStatus:
        return self._client._run(self._client._ops.status(request_id))

    def cancel(self, request_id: str) -> Record:
        return self._client._run(self._client._ops.cancel(request_id))

    def list(self, *, status: Status | str | None = None, page_size: int = 20) -> Iterator[Record]:
        """Every request, newest first; pages are fetched as the iteration reaches them."""
        return iterate_sync(self._client._http, self._client._ops.list_requests(status, page_size))

    def webhooks(self, request_id: str) -> Deliveries:
        """The request's webhook deliveries, each with every attempt."""
        return self._client._run(self._client._ops.webhook_deliveries(f"requests/{request_id}"))

    def redeliver_webhooks(self, request_id: str) -> Deliveries:
        """Send a finished request's webhooks again (same `webhook-id` and body); spends one
        of the account's redelivery budget. The deliveries, pending again."""
        operation = self._client._ops.redeliver_webhooks(f"requests/{request_id}")
        return self._client._run(operation)


class AsyncRequests:
    def __init__(self, client: AsyncRelight) -> None:
        self._client = client

    async def get(self, request_id: str) -> Record:
        return await self._client._run(self._client._ops.get(request_id))

    async def status(self, request_id: str) -> RequestStatus:
        return await self._client._run(self._client._ops.status(request_id))

    async def cancel(self, request_id: str) -> Record:
        return await self._client._run(self._client._ops.cancel(request_id))

    def list(
        self, *, status: Status | str | None = None, page_size: int = 20
    ) -> AsyncIterator[Record]:
        return iterate_async(self._client._http, self._client._ops.list_requests(status, page_size))

    async def webhooks(self, request_id: str) -> Deliveries:
        operation = self._client._ops.webhook_deliveries(f"requests/{request_id}")
        return await self._client._run(operation)

    async def redeliver_webhooks(self, request_id: str) -> Deliveries:
        operation = self._client._ops.redeliver_webhooks(f"requests/{request_id}")
        return await self._client._run(operation)


class Relight:
    """A blocking client for Relight's API.

    `max_retries` applies to 429 and 503 answers (after `Retry-After`) and, for idempotent
    calls, to dropped connections; a submit is idempotent thanks to its `Idempotency-Key`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        max_retry_after: float = 60.0,
    ) -> None:
        self._http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout)
        self._ops = Operations(RetryPolicy(max_retries, max_retry_after=max_retry_after))
        self.requests = Requests(self)

    def _run(self, operation: Operation[T]) -> T:
        return run_sync(self._http, operation)

    def relight(
        self,
        image: ImageInput,
        prompt: str,
        *,
        background_image: ImageInput | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
        priority: str | None = None,
        cancel_after: CancelAfter | None = None,
        **params: Any,
    ) -> RelightRequest:
        """Submit a request (`POST /v2/ic-light`); `params` are Segmind's fields and Relight's
        (`width`, `seed`, `backend`, `webhook_url`, ...). `wait=N` asks the server to hold the
        answer up to N s (≤ 60) so a fast request comes back finished. `priority` is the
        request's lane in your queue (`high`, `normal`, `low`); `cancel_after` (seconds, a
        timedelta or `"5m"`) its deadline: unfinished by then, it is canceled and refunded
        (`error_code` `deadline_exceeded`)."""
        operation = self._ops.submit(
            image,
            prompt,
            background_image=background_image,
            wait=wait,
            idempotency_key=idempotency_key,
            params=params,
            priority=priority,
            cancel_after=cancel_after,
        )
        submitted = self._run(operation)
        return RelightRequest(self, submitted.request_id, submitted)

    def run(self, image: ImageInput, prompt: str, *, timeout: float = 600, **params: Any) -> Record:
        """Submit and wait: `Prefer: wait` on the submit, then polling; the final record."""
        return self.relight(image, prompt, wait=min(timeout, 60), **params).wait(timeout)

    def handle(self, request_id: str) -> RelightRequest:
        """A handle on a request submitted earlier."""
        return RelightRequest(self, request_id)

    def create_batch(
        self,
        requests: Sequence[Mapping[str, Any]],
        *,
        webhook_url: str | None = None,
        webhook_events: Sequence[str] | None = None,
        idempotency_key: str | None = None,
        cancel_after: CancelAfter | None = None,
    ) -> BatchAccepted:
        """Submit many requests at once (`POST /v2/batches`): each item a dict of a submit's
        fields (`prompt`, `subject_image` as a URL, path or bytes, `priority`, ...). All are
        paid for, or none (`InsufficientCreditsError`); `batch.completed` is sent once they all
        ended. `cancel_after` (seconds, a timedelta or `"5m"`) is every item's deadline."""
        operation = self._ops.create_batch(
            requests,
            webhook_url=webhook_url,
            webhook_events=webhook_events,
            idempotency_key=idempotency_key,
            cancel_after=cancel_after,
        )
        return self._run(operation)

    def list_batches(self, *, page_size: int = 20) -> Iterator[BatchSummary]:
        """Every batch, newest first (status and counts; `get_batch` for the items); pages
        are fetched as the iteration reaches them."""
        return iterate_sync(self._http, self._ops.list_batches(page_size))

    def get_batch(self, batch_id: str) -> Batch:
        return self._run(self._ops.get_batch(batch_id))

    def cancel_batch(self, batch_id: str) -> Batch:
        """Cancel (and refund) every item of the batch that has not ended."""
        return self._run(self._ops.cancel_batch(batch_id))

    def wait_batch(
        self, batch_id: str, timeout: float | None = 600, poll_interval: float = 1.0
    ) -> Batch:
        """Poll until every item of the batch has ended; the batch."""
        return self._run(self._ops.wait_batch(batch_id, timeout=timeout, interval=poll_interval))

    def batch_webhooks(self, batch_id: str) -> Deliveries:
        """The batch's webhook deliveries (its `batch.completed`), each with every attempt."""
        return self._run(self._ops.webhook_deliveries(f"batches/{batch_id}"))

    def redeliver_batch_webhooks(self, batch_id: str) -> Deliveries:
        """Send a completed batch's webhooks again (same `webhook-id` and body); spends one of
        the account's redelivery budget, as a request's redelivery does."""
        return self._run(self._ops.redeliver_webhooks(f"batches/{batch_id}"))

    def account(self) -> Account:
        return self._run(self._ops.account())

    def usage(
        self,
        from_: date | datetime | str | None = None,
        to: date | datetime | str | None = None,
        *,
        group_by: str = "day",
    ) -> UsageReport:
        """Usage by UTC `day`, `backend` or `key` over `[from_, to)` (a date `to` includes its
        day; by default the last 30 days); the credit totals equal the ledger's."""
        return self._run(self._ops.usage(usage_params(from_, to, group_by)))

    def usage_csv(
        self,
        from_: date | datetime | str | None = None,
        to: date | datetime | str | None = None,
        *,
        group_by: str = "day",
    ) -> str:
        """`usage` as CSV text, a header row first."""
        return self._run(self._ops.usage_csv(usage_params(from_, to, group_by)))

    def webhook_secret(self) -> WebhookSecret:
        return self._run(self._ops.webhook_secret())

    def rotate_webhook_secret(self) -> WebhookSecret:
        return self._run(self._ops.rotate_webhook_secret())

    def list_keys(self) -> list[Key]:
        """Your API keys, revoked ones too (needs a key with `keys:manage`)."""
        return self._run(self._ops.list_keys())

    def create_key(
        self,
        *,
        label: str | None = None,
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
        expires_in: timedelta | int | None = None,
    ) -> NewKey:
        """A new API key; `.key` is the key itself, shown this once. `scopes` default to all
        but `keys:manage`, and may name only scopes the calling key holds."""
        options = key_options(label, scopes, expires_at, expires_in)
        return self._run(self._ops.create_key(options))

    def update_key(
        self,
        key_id: str,
        *,
        label: str | None = None,
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
        expires_in: timedelta | int | None = None,
        never_expires: bool = False,
        clear_label: bool = False,
    ) -> Key:
        """Change one of your keys' label, scopes (replacing them; only scopes the calling key
        holds may be added) or expiry (`never_expires` removes it; `clear_label` removes the
        label); only what is given changes, at once in every API process."""
        changes = key_changes(label, scopes, expires_at, expires_in, never_expires, clear_label)
        return self._run(self._ops.update_key(key_id, changes))

    def revoke_key(self, key_id: str) -> Key:
        """Revoke one of your keys by id, at once."""
        return self._run(self._ops.revoke_key(key_id))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncRelight:
    """`Relight` for asyncio: the same methods, awaited; `list` and `stream` are async
    iterators."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        max_retry_after: float = 60.0,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout
        )
        self._ops = Operations(RetryPolicy(max_retries, max_retry_after=max_retry_after))
        self.requests = AsyncRequests(self)

    async def _run(self, operation: Operation[T]) -> T:
        return await run_async(self._http, operation)

    async def relight(
        self,
        image: ImageInput,
        prompt: str,
        *,
        background_image: ImageInput | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
        priority: str | None = None,
        cancel_after: CancelAfter | None = None,
        **params: Any,
    ) -> AsyncRelightRequest:
        operation = self._ops.submit(
            image,
            prompt,
            background_image=background_image,
            wait=wait,
            idempotency_key=idempotency_key,
            params=params,
            priority=priority,
            cancel_after=cancel_after,
        )
        submitted = await self._run(operation)
        return AsyncRelightRequest(self, submitted.request_id, submitted)

    async def run(
        self,
        image: ImageInput,
        prompt: str,
        *,
        timeout: float = 600,  # noqa: ASYNC109 (see AsyncRelightRequest.wait)
        **params: Any,
    ) -> Record:
        handle = await self.relight(image, prompt, wait=min(timeout, 60), **params)
        return await handle.wait(timeout)

    def handle(self, request_id: str) -> AsyncRelightRequest:
        return AsyncRelightRequest(self, request_id)

    async def create_batch(
        self,
        requests: Sequence[Mapping[str, Any]],
        *,
        webhook_url: str | None = None,
        webhook_events: Sequence[str] | None = None,
        idempotency_key: str | None = None,
        cancel_after: CancelAfter | None = None,
    ) -> BatchAccepted:
        operation = self._ops.create_batch(
            requests,
            webhook_url=webhook_url,
            webhook_events=webhook_events,
            idempotency_key=idempotency_key,
            cancel_after=cancel_after,
        )
        return await self._run(operation)

    def list_batches(self, *, page_size: int = 20) -> AsyncIterator[BatchSummary]:
        return iterate_async(self._http, self._ops.list_batches(page_size))

    async def get_batch(self, batch_id: str) -> Batch:
        return await self._run(self._ops.get_batch(batch_id))

    async def cancel_batch(self, batch_id: str) -> Batch:
        return await self._run(self._ops.cancel_batch(batch_id))

    async def wait_batch(
        self,
        batch_id: str,
        timeout: float | None = 600,  # noqa: ASYNC109 (see AsyncRelightRequest.wait)
        poll_interval: float = 1.0,
    ) -> Batch:
        return await self._run(
            self._ops.wait_batch(batch_id, timeout=timeout, interval=poll_interval)
        )

    async def batch_webhooks(self, batch_id: str) -> Deliveries:
        return await self._run(self._ops.webhook_deliveries(f"batches/{batch_id}"))

    async def redeliver_batch_webhooks(self, batch_id: str) -> Deliveries:
        return await self._run(self._ops.redeliver_webhooks(f"batches/{batch_id}"))

    async def account(self) -> Account:
        return await self._run(self._ops.account())

    async def usage(
        self,
        from_: date | datetime | str | None = None,
        to: date | datetime | str | None = None,
        *,
        group_by: str = "day",
    ) -> UsageReport:
        """Usage by UTC `day`, `backend` or `key` over `[from_, to)` (see `Relight.usage`)."""
        return await self._run(self._ops.usage(usage_params(from_, to, group_by)))

    async def usage_csv(
        self,
        from_: date | datetime | str | None = None,
        to: date | datetime | str | None = None,
        *,
        group_by: str = "day",
    ) -> str:
        """`usage` as CSV text, a header row first."""
        return await self._run(self._ops.usage_csv(usage_params(from_, to, group_by)))

    async def webhook_secret(self) -> WebhookSecret:
        return await self._run(self._ops.webhook_secret())

    async def rotate_webhook_secret(self) -> WebhookSecret:
        return await self._run(self._ops.rotate_webhook_secret())

    async def list_keys(self) -> list[Key]:
        """Your API keys, revoked ones too (needs a key with `keys:manage`)."""
        return await self._run(self._ops.list_keys())

    async def create_key(
        self,
        *,
        label: str | None = None,
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
        expires_in: timedelta | int | None = None,
    ) -> NewKey:
        """A new API key; `.key` is the key itself, shown this once. `scopes` default to all
        but `keys:manage`, and may name only scopes the calling key holds."""
        options = key_options(label, scopes, expires_at, expires_in)
        return await self._run(self._ops.create_key(options))

    async def update_key(
        self,
        key_id: str,
        *,
        label: str | None = None,
        scopes: list[str] | None = None,
        expires_at: datetime | None = None,
        expires_in: timedelta | int | None = None,
        never_expires: bool = False,
        clear_label: bool = False,
    ) -> Key:
        """Change one of your keys' label, scopes (replacing them; only scopes the calling key
        holds may be added) or expiry (`never_expires` removes it; `clear_label` removes the
        label); only what is given changes, at once in every API process."""
        changes = key_changes(label, scopes, expires_at, expires_in, never_expires, clear_label)
        return await self._run(self._ops.update_key(key_id, changes))

    async def revoke_key(self, key_id: str) -> Key:
        """Revoke one of your keys by id, at once."""
        return await self._run(self._ops.revoke_key(key_id))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
