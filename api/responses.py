"""Response helpers: a JSON response rendered with orjson, and how image answers are described."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

IMAGE_TYPES = ("image/webp", "image/jpeg", "image/png")
BINARY: dict[str, Any] = {"type": "string", "format": "binary"}


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def image_content() -> dict[str, Any]:
    """The OpenAPI `content` of an image answer: bytes under each image type it may have.

    `application/octet-stream` is listed last for generic clients, which know bytes by that
    name only (openapi-python-client reads the first type it knows); the answer's own
    `Content-Type` is always the image's.
    """
    return {
        media_type: {"schema": BINARY} for media_type in (*IMAGE_TYPES, "application/octet-stream")
    }
