"""A real HTTP server on 127.0.0.1 that serves subject images (and misbehaves on request)."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.fakes.server import ThreadedServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class ImageServer(ThreadedServer):
    """Paths: `/<file>` from examples/, `/missing` (404), `/broken` (500), `/not-an-image`,
    `/slow` (answers after a delay), and anything put with `add`."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        for path in EXAMPLES.glob("*.png"):
            self.files[f"/{path.name}"] = (path.read_bytes(), "image/png")
        self.files["/not-an-image"] = (b"<html>hello</html>", "text/html")
        self.requests: list[str] = []
        self.slow_s = 5.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                server.requests.append(self.path)
                if self.path == "/broken":
                    self.send_error(500)
                    return
                if self.path == "/slow":
                    time.sleep(server.slow_s)
                found = server.files.get(self.path.split("?")[0])
                if found is None:
                    self.send_error(404)
                    return
                body, content_type = found
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._listen(Handler)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes, content_type: str = "image/png") -> str:
        self.files[path] = (body, content_type)
        return self.url(path)
