"""One call to a GPU node: send the subject and params, follow the progress stream, return the
images. Every way it can go wrong becomes a `NodeCallFailed` with a kind the dispatcher acts on.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import httpx
import orjson
from pydantic import ValidationError

from relight.backends.render_backend import RenderedImage
from relight.core.backoff import parse_retry_after
from relight.core.params import RelightParams
from relight.nodes.registry import NodeInfo
from relight.nodes.wire import NDJSON, RELIGHT_PATH, NodeRequest, NodeResult

ERROR_EXCERPT = 300


class FailureKind(StrEnum):
    BUSY = "busy"  # every slot of the node is taken (503): try another, or later
    UNREACHABLE = "unreachable"  # no connection, or a connect timeout
    LOST = "lost"  # the node went away mid-request (broken stream, read timeout)
    FAILED = "failed"  # the node answered 5xx or an error event, or nonsense
    AUTH = "auth"  # the node refused our token
    REJECTED = "rejected"  # the request itself is wrong (400/413/422): no node will take it
    UNSUITED = "unsuited"  # this node cannot run this kind of request (no fbc model): try another
    # The request does not fit in the node's GPU memory (out of memory, or over its latent
    # budget): the request's size, not the node's health, so never counted against its breaker.
    TOO_LARGE = "too_large"


# What nodes answer (HTTP 507, or an error event) for a request too large for their GPU.
TOO_LARGE_CODES = frozenset({"out_of_memory", "request_too_large"})


class NodeCallFailed(Exception):
    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s


def _error_text(body: bytes) -> str:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:ERROR_EXCERPT].decode(errors="replace")
    if isinstance(payload, dict) and payload.get("error"):
        return str(payload["error"])[:ERROR_EXCERPT]
    return body[:ERROR_EXCERPT].decode(errors="replace")


def _error_code(body: bytes) -> str | None:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return str(payload.get("code")) if isinstance(payload, dict) else None


def _refusal(status: int, body: bytes, retry_after: str | None) -> NodeCallFailed:
    detail = _error_text(body)
    code = _error_code(body)
    if code == "background_not_served":
        kind = FailureKind.UNSUITED
    elif code in TOO_LARGE_CODES:
        kind = FailureKind.TOO_LARGE
    elif status == 503:
        kind = FailureKind.BUSY
    elif status in (401, 403):
        kind = FailureKind.AUTH
    elif status in (400, 413, 415, 422):
        kind = FailureKind.REJECTED
    else:
        kind = FailureKind.FAILED
    return NodeCallFailed(
        kind,
        f"node answered HTTP {status}: {detail}",
        status_code=status,
        retry_after_s=parse_retry_after(retry_after),
    )


def _images(result: NodeResult) -> list[RenderedImage]:
    try:
        return [
            RenderedImage(
                data=base64.b64decode(image.data, validate=True),
                content_type=image.content_type,
                width=image.width,
                height=image.height,
                seed=image.seed,
            )
            for image in result.images
        ]
    except (binascii.Error, ValueError) as exc:
        raise NodeCallFailed(FailureKind.FAILED, "node sent an undecodable image") from exc


async def call_node(
    http: httpx.AsyncClient,
    node: NodeInfo,
    *,
    image: bytes,
    params: RelightParams,
    seed: int,
    token: str | None,
    progress: Callable[[float], None] | None = None,
    background: bytes | None = None,
) -> tuple[NodeResult, list[RenderedImage]]:
    """Relight on `node`, streaming progress; raise NodeCallFailed when it cannot."""
    body = NodeRequest(
        image=base64.b64encode(image).decode(),
        params=params,
        seed=seed,
        background=base64.b64encode(background).decode() if background is not None else None,
    )
    headers = {"accept": NDJSON, "content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    url = node.url.rstrip("/") + RELIGHT_PATH
    try:
        async with http.stream(
            "POST", url, content=body.model_dump_json().encode(), headers=headers
        ) as response:
            if response.status_code != 200:
                raw = await response.aread()
                raise _refusal(response.status_code, raw, response.headers.get("retry-after"))
            result = await _follow_events(response, progress)
    except httpx.ConnectError as exc:
        raise NodeCallFailed(FailureKind.UNREACHABLE, f"node unreachable: {exc}") from exc
    except httpx.ConnectTimeout as exc:
        raise NodeCallFailed(FailureKind.UNREACHABLE, "node did not accept a connection") from exc
    except httpx.TimeoutException as exc:
        raise NodeCallFailed(FailureKind.LOST, "node went silent mid-request") from exc
    except httpx.HTTPError as exc:
        # A broken stream: the node died (or the network did) while it worked.
        raise NodeCallFailed(
            FailureKind.LOST, f"connection to the node broke: {exc.__class__.__name__}"
        ) from exc
    except orjson.JSONDecodeError as exc:
        raise NodeCallFailed(FailureKind.FAILED, "node sent a malformed event") from exc
    if result is None:
        raise NodeCallFailed(FailureKind.LOST, "node closed the stream before the result")
    try:
        parsed = NodeResult.model_validate(result)
    except ValidationError as exc:
        raise NodeCallFailed(FailureKind.FAILED, "node sent a malformed result") from exc
    return parsed, _images(parsed)


async def _follow_events(
    response: httpx.Response, progress: Callable[[float], None] | None
) -> dict[str, Any] | None:
    """Read the node's NDJSON events, passing progress on: the result event, or None when the
    stream ends without one. An error event raises NodeCallFailed."""
    result: dict[str, Any] | None = None
    async for line in response.aiter_lines():
        if not line.strip():
            continue
        event = orjson.loads(line)
        kind = event.get("event")
        if kind == "progress" and progress is not None:
            progress(float(event.get("progress", 0.0)))
        elif kind == "result":
            result = event
        elif kind == "error":
            code = event.get("code")
            if code in ("invalid_image", "validation_error"):
                failure = FailureKind.REJECTED
            elif code in TOO_LARGE_CODES:
                failure = FailureKind.TOO_LARGE
            else:
                failure = FailureKind.FAILED
            raise NodeCallFailed(failure, f"node failed: {event.get('error')}")
    return result
