"""Reading a relight submission from JSON or multipart/form-data, within size limits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from relight.batches.schemas import BatchOptions
from relight.batches.service import BatchItem, item_error
from relight.core.config import Settings
from relight.core.errors import ImageTooLarge, InvalidParameter, RelightError
from relight.core.image_structure import verify_field_structure
from relight.core.params import RelightParams, SubmitOptions
from relight.jobs.inputs import SubjectSource, parse_subject_image
from relight.jobs.schemas import SubmitBody

UPLOADED = "(uploaded file)"
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# `{` and `,` a JSON submission may hold: its text fields (three prompts of at most 2000
# characters, a URL) stay well below.
MAX_JSON_STRUCTURE = 16 * 1024

# Two bodies, two schemas: generated clients make one model of each and send JSON or a form
# by which one they are given (SubmitForm is SubmitBody with `subject_image` a file; see
# api/app.py, which adds both to the components).
SUBMIT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SubmitBody"}},
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/SubmitForm"}},
        },
    }
}


IMAGE_FIELDS = ("subject_image", "background_image")


def submit_form_schema(body: dict[str, Any]) -> dict[str, Any]:
    """The multipart body's schema, from the JSON body's: the image fields are files."""
    properties = dict(body["properties"])
    properties["subject_image"] = {
        "type": "string",
        "format": "binary",
        "description": "the image file (a URL or base64 also works, sent as a text field)",
    }
    properties["background_image"] = {
        "type": "string",
        "format": "binary",
        "description": "the background image file, for IC-Light's background model (a URL or "
        "base64 also works, sent as a text field)",
    }
    form = {**body, "title": "SubmitForm", "properties": properties}
    form.pop("example", None)
    return form


class InvalidBody(RelightError):
    status_code = 400
    code = "invalid_body"


@dataclass(frozen=True)
class Submitted:
    params: RelightParams
    options: SubmitOptions
    subject: SubjectSource
    background: SubjectSource | None = None


def body_limit(settings: Settings) -> int:
    """Largest accepted body: a base64 image at the byte limit plus room for the fields."""
    return (settings.max_input_bytes * 4) // 3 + 64 * 1024


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ImageTooLarge(f"the request body is {declared} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ImageTooLarge(f"the request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_json(
    request: Request, settings: Settings
) -> tuple[dict[str, Any], dict[str, bytes]]:
    raw = await _read_capped(request, body_limit(settings))
    if not raw.strip():
        raise InvalidBody("the request body is empty; send the parameters as a JSON object")
    # Only the image fields may be large, and base64 holds no `{` or `,`: a body with many is
    # not a submission (every item after an array's first follows a `,`), and parsing it
    # would cost far more than its bytes. (Deep nesting is orjson's to refuse.)
    structure = raw.count(b"{") + raw.count(b",")
    if structure > MAX_JSON_STRUCTURE:
        raise RelightError(
            f"the request body holds more than {MAX_JSON_STRUCTURE} JSON objects and items; "
            "only the image fields may be large",
            status_code=413,
            code="body_too_large",
            extra={"limit_values": MAX_JSON_STRUCTURE},
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        data = _read_json_strictly_valid(raw, exc)
    if not isinstance(data, dict):
        raise InvalidBody("the request body must be a JSON object")
    return data, {}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _read_json_strictly_valid(raw: bytes, orjson_error: orjson.JSONDecodeError) -> Any:
    """What orjson refused, read by the standard parser when it is JSON all the same.

    orjson refuses two things JSON's grammar allows: a `\\ud800` escape of a lone surrogate
    and an integer beyond 64 bits. Read here, they reach the field rules and become a 422
    naming the field (unstorable text, out of range) instead of a 400 for the whole body.
    """
    try:
        return json.loads(raw.decode(), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise InvalidBody(f"the request body is not valid JSON: {orjson_error}") from orjson_error


async def _read_form(
    request: Request, settings: Settings
) -> tuple[dict[str, Any], dict[str, bytes]]:
    limit = body_limit(settings)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ImageTooLarge(f"the request body is {declared} bytes; the limit is {limit} bytes")
    try:
        form = await request.form(max_files=2, max_fields=64, max_part_size=limit)
    except RelightError:
        raise
    except Exception as exc:
        raise InvalidBody(f"the multipart form could not be read: {exc}") from exc
    data: dict[str, Any] = {}
    uploads: dict[str, bytes] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in IMAGE_FIELDS:
                    raise InvalidBody(
                        f"unexpected file field {name!r}; send the image as subject_image "
                        "(and a background as background_image)"
                    )
                upload = await value.read(settings.max_input_bytes + 1)
                if len(upload) > settings.max_input_bytes:
                    limit_bytes = settings.max_input_bytes
                    raise ImageTooLarge(f"{name} is larger than the limit of {limit_bytes} bytes")
                uploads[name] = upload
                data[name] = UPLOADED
            elif name == "webhook_events":
                data.setdefault(name, []).append(value)
            else:
                data[name] = value
    finally:
        await form.close()
    return data, uploads


async def read_submission(request: Request, settings: Settings) -> Submitted:
    """Parse and validate, inline images included (their structure), before anything is stored."""
    content_type = request.headers.get("content-type", "application/json").lower()
    if content_type.startswith(FORM_TYPES):
        data, uploads = await _read_form(request, settings)
    elif content_type.startswith("application/json") or "json" in content_type:
        data, uploads = await _read_json(request, settings)
    else:
        raise RelightError(
            f"unsupported content type {content_type!r}; send application/json or "
            "multipart/form-data",
            status_code=415,
            code="unsupported_media_type",
        )
    return await submission_of(settings, data, uploads)


async def submission_of(
    settings: Settings, data: dict[str, Any], uploads: dict[str, bytes]
) -> Submitted:
    """A submission's fields, validated as one (a single submit's body, or a batch's item)."""
    body = SubmitBody.model_validate(data)
    params, options = body.split()
    subject = await _image(settings, "subject_image", body.subject_image, uploads)
    background = None
    if body.background_image is not None and (
        params.background_source is not None and params.background_source.needs_image
    ):
        background = await _image(settings, "background_image", body.background_image, uploads)
    return Submitted(params=params, options=options, subject=subject, background=background)


async def _image(
    settings: Settings, field: str, value: str, uploads: dict[str, bytes]
) -> SubjectSource:
    """An image field as a source: an uploaded file, a URL (fetched by the worker), or inline
    data whose structure is checked now, so a bad image is a 400/413 at submit and not a failed
    job later (without its pixels, which only the worker decodes)."""
    if field in uploads:
        source = SubjectSource(data=uploads[field])
    else:
        source = parse_subject_image(
            value, max_bytes=settings.max_input_bytes, policy=settings.egress_policy, field=field
        )
    if source.data is not None:
        await run_in_threadpool(
            verify_field_structure,
            field,
            source.data,
            max_bytes=settings.max_input_bytes,
            max_pixels=settings.max_input_pixels,
        )
    return source


# An item's webhook is the batch's: a field of its own would be ignored, so it is refused.
BATCH_ONLY_FIELDS = ("webhook_url", "webhook_events")


@dataclass(frozen=True)
class SubmittedBatch:
    items: list[BatchItem]
    webhook_url: str | None
    webhook_events: list[str]


async def read_batch(request: Request, settings: Settings) -> SubmittedBatch:
    """A batch's JSON body, each item validated exactly as a single submit's body (inline
    images included); a bad item is refused naming its index (`requests[3].cfg: ...`)."""
    content_type = request.headers.get("content-type", "application/json").lower()
    if not (content_type.startswith("application/json") or "json" in content_type):
        raise RelightError(
            f"unsupported content type {content_type!r}; a batch is sent as application/json",
            status_code=415,
            code="unsupported_media_type",
        )
    data, _ = await _read_json(request, settings)
    envelope = BatchOptions.model_validate(data)
    if len(envelope.requests) > settings.max_batch_size:
        raise InvalidParameter(
            f"requests: a batch holds at most {settings.max_batch_size} requests, "
            f"got {len(envelope.requests)}",
            extra={"field": "requests", "limit": settings.max_batch_size},
        )
    items = []
    for index, item in enumerate(envelope.requests):
        items.append(await _batch_item(settings, index, item))
    return SubmittedBatch(
        items=items,
        webhook_url=envelope.webhook_url,
        webhook_events=list(envelope.webhook_events),
    )


async def _batch_item(settings: Settings, index: int, item: Any) -> BatchItem:
    prefix = f"requests[{index}]"
    if not isinstance(item, dict):
        raise InvalidParameter(
            f"{prefix}: must be an object (a POST /v2/ic-light body)", extra={"field": prefix}
        )
    for name in BATCH_ONLY_FIELDS:
        if name in item:
            raise InvalidParameter(
                f"{prefix}.{name}: not allowed in a batch item; set {name} on the batch",
                extra={"field": f"{prefix}.{name}"},
            )
    try:
        submitted = await submission_of(settings, item, {})
    except ValidationError as exc:
        raise _named_item_errors(prefix, exc) from exc
    except RelightError as exc:
        raise item_error(index, exc) from exc
    return BatchItem(
        params=submitted.params,
        options=submitted.options,
        subject=submitted.subject,
        background=submitted.background,
    )


def _named_item_errors(prefix: str, exc: ValidationError) -> RequestValidationError:
    """The item's field errors, each located under the item (`requests[3].cfg`)."""
    errors = []
    for error in exc.errors():
        located = dict(error)
        located["loc"] = (prefix, *error.get("loc", ()))
        errors.append(located)
    return RequestValidationError(errors)
