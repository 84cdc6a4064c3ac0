"""How `relight-api` serves the app: uvicorn's httptools protocol with a bound on the request
head, which uvicorn sets only for its h11 protocol (`h11_max_incomplete_event_size`).

llhttp keeps every byte of a header until the header ends, so a client could make the server
hold a 100 MB header; here a head still incomplete after RELIGHT_MAX_HEADER_BYTES is answered
431 and the connection closed, without reading on. The app checks the head's size again
(`api.limits.RequestLimits`), so the limit holds under any server.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from relight.core.config import Settings

# uvicorn's (and h11's) own default, when the config names none.
DEFAULT_MAX_HEAD_BYTES = 16 * 1024


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that answers 431 to a request head larger than the config's
    `h11_max_incomplete_event_size` (counted as it arrives, before it is parsed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_head_bytes = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_HEAD_BYTES
        self.head_bytes = 0
        self.in_body = False

    def data_received(self, data: bytes) -> None:
        if not self.in_body:
            self.head_bytes += len(data)
        super().data_received(data)
        # Still in a head (a chunk that ended it counted body bytes too, and does not count).
        if not self.in_body and self.head_bytes > self.max_head_bytes:
            if not self.transport.is_closing():
                self.send_431_response()

    def on_headers_complete(self) -> None:
        self.in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.in_body = False
        self.head_bytes = 0
        super().on_message_complete()

    def send_431_response(self) -> None:
        message = f"the request's headers are larger than the limit of {self.max_head_bytes} bytes"
        content = [
            STATUS_LINE[431],
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(message)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            message.encode("ascii"),
        ]
        self.transport.write(b"".join(content))
        self.transport.close()


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options (beyond the app and address) for serving as `relight-api` does."""
    return {
        "log_config": None,
        "access_log": False,
        "proxy_headers": True,
        # Explicit, so a missing package fails loudly instead of falling back to slower ones.
        "loop": "uvloop",
        "http": BoundedHttpToolsProtocol,
        # The bound of the request head: read by BoundedHttpToolsProtocol (and by h11).
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
