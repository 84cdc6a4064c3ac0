"""A stand-in Hugging Face Hub on 127.0.0.1: just what `huggingface_hub` calls to download.

    GET  /api/models/{owner}/{name}/revision/{rev}    {"id", "sha", "siblings"}
    HEAD /{owner}/{name}/resolve/{rev}/{path}         X-Repo-Commit, ETag, Content-Length
    GET  /{owner}/{name}/resolve/{rev}/{path}         the bytes; `Range: bytes=N-` gives 206

ETags follow the hub: `.safetensors` files are LFS files, named by their sha256 in
`X-Linked-Etag` (and `X-Linked-Size`); other files by their git blob sha1 in `ETag`. A revision
is `main` or the repository's one commit. `cut(path, after)` makes the next download of `path`
hang up after `after` bytes and the file unavailable (503) until `heal()`: a connection lost
mid-file while the hub stays down, so only a later run can finish it. Every request is recorded
in `requests` as (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler

from tests.fakes.server import ThreadedServer

RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)$")
RANGE = re.compile(r"^bytes=(?P<start>\d+)-$")


class FakeHub(ThreadedServer):
    """`repos`: repository id → {path in the repository: bytes}."""

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.commits = {
            repo: hashlib.sha1(repo.encode(), usedforsecurity=False).hexdigest() for repo in repos
        }
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._cuts: dict[str, int] = {}
        self._down: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_HEAD(self) -> None:
                hub._serve(self, body=False)

            def do_GET(self) -> None:
                hub._serve(self, body=True)

        self._listen(Handler)
        self.url = f"http://127.0.0.1:{self.port}"

    def cut(self, path: str, after: int) -> None:
        """The next GET of `path` stops after `after` bytes; then 503 until `heal()`."""
        with self._lock:
            self._cuts[path] = after

    def heal(self) -> None:
        with self._lock:
            self._down.clear()

    def ranges(self, path: str) -> list[str | None]:
        """The Range header of every GET of `path`, in order."""
        with self._lock:
            return [rng for method, p, rng in self.requests if method == "GET" and p == path]

    def _serve(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = handler.path.split("?", 1)[0]
        with self._lock:
            self.requests.append((handler.command, path, handler.headers.get("Range")))
        if (info := INFO.match(path)) is not None and body:
            self._info(handler, info["repo"], info["rev"])
            return
        match = RESOLVE.match(path)
        if match is None or not self._knows(match["repo"], match["rev"]):
            self._send(handler, 404, b'{"error": "Repository not found"}', body=body)
            return
        data = self.repos[match["repo"]].get(match["path"])
        if data is None:
            self._send(handler, 404, b'{"error": "Entry not found"}', body=body)
            return
        headers = {"X-Repo-Commit": self.commits[match["repo"]], "Accept-Ranges": "bytes"}
        if match["path"].endswith(".safetensors"):
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
        blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False)
        headers["ETag"] = f'"{blob.hexdigest()}"'
        if not body:
            self._send(handler, 200, b"", headers=headers, length=len(data), body=False)
            return
        with self._lock:
            down = path in self._down
            cut_after = self._cuts.pop(path, None)
            if cut_after is not None:
                self._down.add(path)
        if down:
            self._send(handler, 503, b'{"error": "unavailable"}', body=True)
            return
        start = 0
        if (wanted := RANGE.match(handler.headers.get("Range") or "")) is not None:
            start = int(wanted["start"])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        part = data[start:]
        status = 206 if start else 200
        if cut_after is None:
            self._send(handler, status, part, headers=headers, body=True)
            return
        # Promise the whole file, send part of it, hang up.
        self._send(handler, status, part[:cut_after], headers=headers, length=len(part), body=True)
        handler.close_connection = True
        handler.wfile.flush()
        handler.connection.shutdown(2)

    def _knows(self, repo: str, revision: str) -> bool:
        return repo in self.repos and revision in ("main", self.commits[repo])

    def _info(self, handler: BaseHTTPRequestHandler, repo: str, revision: str) -> None:
        if not self._knows(repo, revision):
            self._send(handler, 404, b'{"error": "Repository not found"}', body=True)
            return
        document = {
            "id": repo,
            "modelId": repo,
            "sha": self.commits[repo],
            "private": False,
            "siblings": [{"rfilename": name} for name in sorted(self.repos[repo])],
        }
        self._send(handler, 200, json.dumps(document).encode(), body=True)

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        *,
        body: bool,
        headers: dict[str, str] | None = None,
        length: int | None = None,
    ) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data) if length is None else length))
        if status >= 400:
            handler.send_header("Content-Type", "application/json")
            handler.send_header("X-Error-Message", data.decode())
        handler.end_headers()
        if body:
            handler.wfile.write(data)
