"""What each call of the tenant API does, written once as a sans-I/O operation (see `_core`)."""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from relight_client._core import (
    Call,
    Emit,
    Event,
    Listen,
    NextEvent,
    Operation,
    RetryPolicy,
    Sleep,
    json_of,
    send,
)
from relight_client.errors import (
    ConnectionFailedError,
    NotFoundError,
    RequestFailedError,
    WaitTimeoutError,
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

# Image inputs: a local file (path), raw bytes, or a string the server takes as it is
# (an http(s) URL, a data URL, base64).
ImageInput = str | bytes | os.PathLike[str]
MAX_PREFER_WAIT_S = 60
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# The server sends a heartbeat every RELIGHT_STATUS_STREAM_PING_S (15 s by default): a stream
# silent for this long is taken as dead and opened again.
STREAM_SILENCE_S = 60.0


def usage_params(
    from_: date | datetime | str | None, to: date | datetime | str | None, group_by: str
) -> dict[str, str]:
    """The query of a usage report: ISO dates or datetimes (a naive datetime is UTC)."""
    params = {"group_by": group_by}
    for name, value in (("from", from_), ("to", to)):
        if value is not None:
            params[name] = value if isinstance(value, str) else value.isoformat()
    return params


def encode_image(image: ImageInput) -> str:
    """The JSON value of `subject_image`/`background_image` for `image`."""
    if isinstance(image, bytes):
        return base64.b64encode(image).decode()
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
        return image
    if isinstance(image, os.PathLike) or _names_a_file(image):
        return base64.b64encode(Path(image).read_bytes()).decode()
    return image  # already base64


def _names_a_file(text: str) -> bool:
    """A path, not base64: an existing file, or a name with an image extension (so a mistyped
    path raises FileNotFoundError here rather than a 400 from the server)."""
    if text.lower().endswith(IMAGE_SUFFIXES):
        return True
    try:
        return Path(text).is_file()
    except OSError:
        # Base64 longer than the system's file-name limit (ENAMETOOLONG) is data, not a path.
        return False


# A request's deadline: seconds, a timedelta, or the header's own text (`30s`, `5m`, `1m30s`).
CancelAfter = float | int | timedelta | str


def cancel_after_header(value: CancelAfter) -> str:
    """The `Cancel-After` header for `value` (a number counts as seconds)."""
    if isinstance(value, str):
        return value
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds <= 0:
        raise ValueError(f"cancel_after must be positive, got {value!r}")
    return f"{int(seconds * 1000)}ms" if seconds != int(seconds) else f"{int(seconds)}s"


def key_options(
    label: str | None,
    scopes: list[str] | None,
    expires_at: datetime | None,
    expires_in: timedelta | int | None,
) -> dict[str, Any]:
    """The body of `POST /v2/keys`: only what was given (the server's defaults for the rest)."""
    options: dict[str, Any] = {}
    if label is not None:
        options["label"] = label
    if scopes is not None:
        options["scopes"] = list(scopes)
    if expires_at is not None:
        options["expires_at"] = expires_at.isoformat()
    if expires_in is not None:
        seconds = expires_in.total_seconds() if isinstance(expires_in, timedelta) else expires_in
        options["expires_in"] = int(seconds)
    return options


def key_changes(
    label: str | None,
    scopes: list[str] | None,
    expires_at: datetime | None,
    expires_in: timedelta | int | None,
    never_expires: bool,
    clear_label: bool,
) -> dict[str, Any]:
    """The body of `PATCH /v2/keys/{id}`: what was given (`never_expires`: `expires_at: null`;
    `clear_label`: `label: null`)."""
    changes = key_options(label, scopes, expires_at, expires_in)
    if never_expires:
        if expires_at is not None or expires_in is not None:
            raise ValueError("give expires_at, expires_in or never_expires, not two")
        changes["expires_at"] = None
    if clear_label:
        if label is not None:
            raise ValueError("give a label or clear_label, not both")
        changes["label"] = None
    return changes


def new_idempotency_key() -> str:
    return f"relight-py-{uuid.uuid4()}"


class Operations:
    """The tenant API's operations; `policy` decides the retries of every call."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def submit(
        self,
        image: ImageInput,
        prompt: str,
        *,
        background_image: ImageInput | None,
        wait: float | None,
        idempotency_key: str | None,
        params: dict[str, Any],
        priority: str | None = None,
        cancel_after: CancelAfter | None = None,
    ) -> Operation[Accepted | Record]:
        """`POST /v2/ic-light`; the key is drawn once here, so every retry reuses it and the
        server replays the first request instead of charging again."""
        body: dict[str, Any] = {"prompt": prompt, "subject_image": encode_image(image), **params}
        if background_image is not None:
            body["background_image"] = encode_image(background_image)
        if priority is not None:
            body["priority"] = priority
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        if cancel_after is not None:
            headers["Cancel-After"] = cancel_after_header(cancel_after)
        if wait is not None and wait > 0:
            headers["Prefer"] = f"wait={min(int(wait), MAX_PREFER_WAIT_S)}"
        response = yield from send(
            Call("POST", "/v2/ic-light", json=body, headers=headers), self.policy
        )
        if response.status_code == 200:
            return Record.model_validate(json_of(response))
        return Accepted.model_validate(json_of(response))

    def create_batch(
        self,
        requests: Sequence[Mapping[str, Any]],
        *,
        webhook_url: str | None,
        webhook_events: Sequence[str] | None,
        idempotency_key: str | None,
        cancel_after: CancelAfter | None = None,
    ) -> Operation[BatchAccepted]:
        """`POST /v2/batches`: each item a submit's fields (`subject_image` may be a path or
        bytes, as for `submit`); one key for the whole batch, reused by every retry;
        `cancel_after` every item's deadline."""
        items = []
        for request in requests:
            item = dict(request)
            for field in ("subject_image", "background_image"):
                if item.get(field) is not None:
                    item[field] = encode_image(item[field])
            items.append(item)
        body: dict[str, Any] = {"requests": items}
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        if webhook_events is not None:
            body["webhook_events"] = list(webhook_events)
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        if cancel_after is not None:
            headers["Cancel-After"] = cancel_after_header(cancel_after)
        call = Call("POST", "/v2/batches", json=body, headers=headers)
        response = yield from send(call, self.policy)
        return BatchAccepted.model_validate(json_of(response))

    def get_batch(self, batch_id: str) -> Operation[Batch]:
        response = yield from send(Call("GET", f"/v2/batches/{batch_id}"), self.policy)
        return Batch.model_validate(json_of(response))

    def cancel_batch(self, batch_id: str) -> Operation[Batch]:
        # Canceling a batch again changes nothing and answers it again: safe to resend.
        response = yield from send(Call("POST", f"/v2/batches/{batch_id}/cancel"), self.policy)
        return Batch.model_validate(json_of(response))

    def list_batches(self, page_size: int) -> Operation[None]:
        """Emit every batch, newest first, following `next_cursor` page by page."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor is not None:
                params["cursor"] = cursor
            response = yield from send(Call("GET", "/v2/batches", params=params), self.policy)
            page = json_of(response)
            for item in page["data"]:
                yield Emit(BatchSummary.model_validate(item))
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def wait_batch(
        self, batch_id: str, *, timeout: float | None, interval: float
    ) -> Operation[Batch]:
        """Poll the batch until every item has ended; `WaitTimeoutError` after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(0.1, interval)
        while True:
            batch = yield from self.get_batch(batch_id)
            if batch.is_completed:
                return batch
            if deadline is not None and time.monotonic() + delay > deadline:
                raise WaitTimeoutError(batch_id, timeout or 0.0)
            yield Sleep(delay)
            delay = min(interval, delay * 1.5)

    def get(self, request_id: str) -> Operation[Record]:
        response = yield from send(Call("GET", f"/v2/requests/{request_id}"), self.policy)
        return Record.model_validate(json_of(response))

    def status(self, request_id: str) -> Operation[RequestStatus]:
        response = yield from send(Call("GET", f"/v2/requests/{request_id}/status"), self.policy)
        return RequestStatus.model_validate(json_of(response))

    def cancel(self, request_id: str) -> Operation[Record]:
        # Not resent after a dropped connection: a second cancel of a canceled request is a 409.
        call = Call("POST", f"/v2/requests/{request_id}/cancel", idempotent=False)
        response = yield from send(call, self.policy)
        return Record.model_validate(json_of(response))

    def list_requests(self, status: Status | str | None, page_size: int) -> Operation[None]:
        """Emit every record, newest first, following `next_cursor` page by page."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if status is not None:
                params["status"] = str(status)
            if cursor is not None:
                params["cursor"] = cursor
            response = yield from send(Call("GET", "/v2/requests", params=params), self.policy)
            page = json_of(response)
            for item in page["data"]:
                yield Emit(Record.model_validate(item))
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def follow(
        self, request_id: str, *, timeout: float | None, interval: float
    ) -> Operation[RequestStatus]:
        """Emit each change of the request's status from its Server-Sent Events stream
        (`/status/stream`) until it is terminal; the terminal status is the result. A dropped
        or silent stream is opened again with `Last-Event-ID` (the server then sends only what
        changed, and always the end); a server without the stream (404 with no error code) is
        polled every `interval` instead. `WaitTimeoutError` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        path = f"/v2/requests/{request_id}/status/stream"
        last_id: str | None = None
        failures = 0
        seen: RequestStatus | None = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError(request_id, timeout or 0.0)
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            silence = STREAM_SILENCE_S if remaining is None else min(STREAM_SILENCE_S, remaining)
            try:
                yield from send(
                    Listen("GET", path, headers=headers, read_timeout=silence), self.policy
                )
            except NotFoundError as error:
                if error.code is not None:
                    raise  # the request is unknown (or another tenant's)
                return (
                    yield from self.poll(
                        request_id, timeout=remaining, interval=interval, emit=True
                    )
                )
            try:
                while True:
                    event = yield NextEvent()
                    if event is None:
                        break  # closed before the end (a proxy's limit): open it again
                    failures = 0
                    last_id = event.id or last_id
                    status = yield from self._on_event(request_id, event, seen)
                    if status is not None and status != seen:
                        seen = status
                        yield Emit(status)
                    if event.event == "done" and seen is not None:
                        return seen
            except httpx.TransportError as error:
                failures += 1
                if failures > self.policy.max_retries:
                    raise ConnectionFailedError(
                        f"GET {path}: {type(error).__name__}: {error}", cause=error
                    ) from error
                yield Sleep(self.policy.backoff(failures - 1))

    def _on_event(
        self, request_id: str, event: Event, seen: RequestStatus | None
    ) -> Operation[RequestStatus | None]:
        """The status an event shows: a `status` event's own; at `done`, the terminal status
        (read once more when a reconnect skipped its `status` event)."""
        if event.event == "status":
            return RequestStatus.model_validate_json(event.data)
        if event.event == "done" and (seen is None or not seen.status.is_terminal):
            return (yield from self.status(request_id))
        return None

    def poll(
        self, request_id: str, *, timeout: float | None, interval: float, emit: bool
    ) -> Operation[RequestStatus]:
        """Poll the status until it is terminal, emitting each change when `emit`; raises
        `WaitTimeoutError` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[object, ...] | None = None
        delay = min(0.1, interval)
        while True:
            current = yield from self.status(request_id)
            state = (current.status, current.queue_position, current.progress)
            if emit and state != seen:
                yield Emit(current)
            seen = state
            if current.status.is_terminal:
                return current
            if deadline is not None and time.monotonic() + delay > deadline:
                raise WaitTimeoutError(request_id, timeout or 0.0)
            yield Sleep(delay)
            delay = min(interval, delay * 1.5)

    def wait(self, request_id: str, *, timeout: float | None, interval: float) -> Operation[Record]:
        yield from self.poll(request_id, timeout=timeout, interval=interval, emit=False)
        return (yield from self.get(request_id))

    def output(self, request_id: str, index: int) -> Operation[bytes]:
        call = Call("GET", f"/v2/requests/{request_id}/outputs/{index}")
        response = yield from send(call, self.policy)
        return response.content

    def download(self, request_id: str, directory: Path) -> Operation[list[Path]]:
        """Write every output of a COMPLETED request to `directory` (`<id>-<index>.<ext>`)."""
        record = yield from self.get(request_id)
        if record.status is not Status.COMPLETED:
            raise RequestFailedError(request_id, record.status, record.error_code, record.error)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for output in record.outputs:
            content = yield from self.output(request_id, output.index)
            extension = EXTENSIONS.get(output.content_type, "bin")
            path = directory / f"{request_id}-{output.index}.{extension}"
            path.write_bytes(content)
            paths.append(path)
        return paths

    def account(self) -> Operation[Account]:
        response = yield from send(Call("GET", "/v2/account"), self.policy)
        return Account.model_validate(json_of(response))

    def usage(self, params: dict[str, str]) -> Operation[UsageReport]:
        response = yield from send(Call("GET", "/v2/usage", params=params), self.policy)
        return UsageReport.model_validate(json_of(response))

    def usage_csv(self, params: dict[str, str]) -> Operation[str]:
        call = Call("GET", "/v2/usage", params={**params, "format": "csv"})
        response = yield from send(call, self.policy)
        return response.text

    def webhook_secret(self) -> Operation[WebhookSecret]:
        response = yield from send(Call("GET", "/v2/webhooks/secret"), self.policy)
        return WebhookSecret.model_validate(json_of(response))

    def webhook_deliveries(self, owner: str) -> Operation[list[WebhookDelivery]]:
        """`GET /v2/<owner>/webhooks`, `owner` being `requests/<id>` or `batches/<id>`."""
        response = yield from send(Call("GET", f"/v2/{owner}/webhooks"), self.policy)
        return [WebhookDelivery.model_validate(item) for item in json_of(response)["data"]]

    def redeliver_webhooks(self, owner: str) -> Operation[list[WebhookDelivery]]:
        """`POST /v2/<owner>/webhooks/redeliver`. Not resent after a dropped connection: each
        accepted redelivery sends the webhooks again and spends the redelivery budget."""
        call = Call("POST", f"/v2/{owner}/webhooks/redeliver", idempotent=False)
        response = yield from send(call, self.policy)
        return [WebhookDelivery.model_validate(item) for item in json_of(response)["data"]]

    def list_keys(self) -> Operation[list[Key]]:
        response = yield from send(Call("GET", "/v2/keys"), self.policy)
        return [Key.model_validate(item) for item in json_of(response)["data"]]

    def create_key(self, options: dict[str, Any]) -> Operation[NewKey]:
        call = Call("POST", "/v2/keys", json=options, idempotent=False)
        response = yield from send(call, self.policy)
        return NewKey.model_validate(json_of(response))

    def update_key(self, key_id: str, changes: dict[str, Any]) -> Operation[Key]:
        call = Call("PATCH", f"/v2/keys/{key_id}", json=changes)
        response = yield from send(call, self.policy)
        return Key.model_validate(json_of(response))

    def revoke_key(self, key_id: str) -> Operation[Key]:
        response = yield from send(Call("DELETE", f"/v2/keys/{key_id}"), self.policy)
        return Key.model_validate(json_of(response))

    def rotate_webhook_secret(self) -> Operation[WebhookSecret]:
        call = Call("POST", "/v2/webhooks/secret/rotate", idempotent=False)
        response = yield from send(call, self.policy)
        return WebhookSecret.model_validate(json_of(response))
