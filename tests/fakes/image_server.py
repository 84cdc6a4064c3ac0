"""A real HTTP server on 127.0.0.1 that serves subject images (and misbehaves on request)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class QuietServer(ThreadingHTTPServer):
    """Clients that hang up early (timeouts under test) are expected, not errors to print."""

    def handle_error(self, request: object, client_address: object) -> None:
        return


class ImageServer:
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

        self._httpd = QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes, content_type: str = "image/png") -> str:
        self.files[path] = (body, content_type)
        return self.url(path)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
