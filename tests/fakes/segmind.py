"""A stand-in for Segmind's hosted ic-light API: a real HTTP server on 127.0.0.1, in a thread.

`POST /v1/ic-light` behaves like `https://api.segmind.com/v1/ic-light`:

- the `x-api-key` header must be the configured key (else 401 `{"error": ...}`);
- the JSON body is checked as Segmind checks it (names, types, ranges, enums;
  `prompt` and `subject_image` required; an unknown field is a 422);
- `subject_image` is fetched (http(s) URL) or base64-decoded (plain or data URL) and must be an
  image (else 400);
- the answer is the raw bytes of one image in `output_format` (a solid colour that depends on
  the seed, of the highres output size `round(W·scale/64)·64 × round(H·scale/64)·64`), with
  `Content-Type` image/webp|jpeg|png and an `x-remaining-credits` header that counts down (406
  once the credits are spent).

Every request is recorded (`calls()`: headers, JSON body, arrival time, what was answered and
when). Failures are scripted: `script([...])` queues `Answer`s for the next valid calls, in
order; `always(answer)` sets what comes once the queue is spent (images by default). Answers:
`Answer.error(401 | 406 | 422 | 500 | 502 | 504 …)`, `Answer.rate_limited(retry_after="2")`,
`Answer.hang()` (no answer before the client's timeout), `Answer.garbage()` (200 with an image
content type and bytes that are no image) and `Answer.html()` (200 with a text/html page).

The lower part of the module wires Relight to a stand-in: settings, an API client over ASGI and
a burst worker for those settings.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import re
import select
import socket
import threading
import time
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from http.server import BaseHTTPRequestHandler
from types import MappingProxyType
from typing import Any

import httpx
from PIL import Image

from api.app import create_app
from relight.core.config import Settings
from tests.fakes.server import ThreadedServer
from worker.settings import build_worker

API_PATH = "/v1/ic-light"
DEFAULT_API_KEY = "test-key"

# Segmind's ic-light parameters, every one of them.
SEGMIND_PARAMETERS = frozenset(
    {
        "prompt",
        "subject_image",
        "appended_prompt",
        "negative_prompt",
        "cfg",
        "width",
        "height",
        "steps",
        "seed",
        "highres_scale",
        "highres_denoise",
        "lowres_denoise",
        "light_source",
        "number_of_images",
        "output_format",
        "output_quality",
    }
)
REQUIRED = ("prompt", "subject_image")
SIZES = frozenset(range(256, 1025, 64))
LIGHT_SOURCES = ("None", "Left Light", "Right Light", "Top Light", "Bottom Light")
# output_format → (PIL format, Content-Type)
OUTPUT_FORMATS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {"webp": ("WEBP", "image/webp"), "jpg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png")}
)
# number fields: (lowest, highest); ints must be JSON integers, numbers may be either.
NUMBERS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "cfg": (1, 32),
        "highres_scale": (1, 3),
        "highres_denoise": (0.1, 1),
        "lowres_denoise": (0.1, 1),
    }
)
INTEGERS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {"steps": (1, 100), "number_of_images": (1, 12), "output_quality": (0, 100)}
)
STRINGS = ("prompt", "subject_image", "appended_prompt", "negative_prompt")
DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.I)

# What gateways in front of Segmind answer for 502 and 504: a page, not JSON.
GATEWAY_PAGE = b"<html><body><h1>%d</h1>The upstream server is not available.</body></html>"
ERROR_MESSAGES: Mapping[int, str] = MappingProxyType(
    {
        400: "Bad request",
        401: "Unauthorized: invalid or missing API key",
        403: "Forbidden",
        406: "Not enough credits",
        422: "Unprocessable entity",
        429: "Too many requests: rate limit exceeded",
        500: "Internal server error",
    }
)


def output_size(width: int, height: int, highres_scale: float) -> tuple[int, int]:
    """Segmind's output size: `round(W·scale/64)·64 × round(H·scale/64)·64`."""
    return (
        int(round(width * highres_scale / 64.0) * 64),
        int(round(height * highres_scale / 64.0) * 64),
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate_body(body: object) -> list[str]:
    """What Segmind would refuse in this request body; empty when it is acceptable."""
    if not isinstance(body, dict):
        return ["the body must be a JSON object"]
    problems = [f"{name}: unknown field" for name in sorted(set(body) - SEGMIND_PARAMETERS)]
    problems += [f"{name}: field required" for name in REQUIRED if name not in body]
    for name in STRINGS:
        if name in body and not isinstance(body[name], str):
            problems.append(f"{name}: must be a string")
    if isinstance(body.get("prompt"), str) and not body["prompt"].strip():
        problems.append("prompt: must not be empty")
    for name, (low, high) in NUMBERS.items():
        if name in body and not (_is_number(body[name]) and low <= body[name] <= high):
            problems.append(f"{name}: must be a number from {low:g} to {high:g}")
    for name, (low_i, high_i) in INTEGERS.items():
        if name in body and not (_is_int(body[name]) and low_i <= body[name] <= high_i):
            problems.append(f"{name}: must be an integer from {low_i} to {high_i}")
    for name in ("width", "height"):
        if name in body and not (_is_int(body[name]) and body[name] in SIZES):
            problems.append(f"{name}: must be one of 256, 320, …, 1024")
    if "seed" in body and not (_is_int(body["seed"]) and body["seed"] >= -1):
        problems.append("seed: must be an integer, -1 for a random one")
    if "light_source" in body and body["light_source"] not in LIGHT_SOURCES:
        problems.append(f"light_source: must be one of {', '.join(LIGHT_SOURCES)}")
    if "output_format" in body and body["output_format"] not in OUTPUT_FORMATS:
        problems.append(f"output_format: must be one of {', '.join(OUTPUT_FORMATS)}")
    return problems


def render_image(body: Mapping[str, Any]) -> tuple[bytes, str]:
    """The image the stand-in answers for a valid body: its bytes and Content-Type."""
    width, height = output_size(
        int(body.get("width", 512)), int(body.get("height", 640)), body.get("highres_scale", 1.5)
    )
    seed = int(body.get("seed", 0))
    colour = (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)
    pil_format, content_type = OUTPUT_FORMATS[str(body.get("output_format", "webp"))]
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(
        buffer, format=pil_format, quality=int(body.get("output_quality", 80))
    )
    return buffer.getvalue(), content_type


class Kind(StrEnum):
    IMAGE = "image"  # the normal answer: the rendered image
    ERROR = "error"  # an HTTP error: status, body, headers
    HANG = "hang"  # no answer for `hang_s` seconds, then the connection is dropped
    RAW = "raw"  # a 200 with these bytes and this content type (garbage)


@dataclass(frozen=True)
class Answer:
    """One scripted answer; build it with the class methods."""

    kind: Kind
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    hang_s: float = 0.0

    @classmethod
    def image(cls) -> Answer:
        """What Segmind answers when all is well (the default)."""
        return cls(Kind.IMAGE)

    @classmethod
    def error(
        cls, status: int, message: str | None = None, *, retry_after: str | None = None
    ) -> Answer:
        """An HTTP error: JSON `{"error": message}`, except 502/504 (a gateway's HTML page)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        if status in (502, 504) and message is None:
            return cls(
                Kind.ERROR,
                status,
                GATEWAY_PAGE % status,
                "text/html; charset=utf-8",
                headers,
            )
        text = message or ERROR_MESSAGES.get(status, f"HTTP {status}")
        return cls(Kind.ERROR, status, json.dumps({"error": text}).encode(), headers=headers)

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1") -> Answer:
        """429, with `Retry-After` (seconds or an HTTP date) unless it is None."""
        return cls.error(429, retry_after=retry_after)

    @classmethod
    def hang(cls, seconds: float = 10.0) -> Answer:
        """Say nothing for `seconds` (longer than the client waits), then hang up."""
        return cls(Kind.HANG, hang_s=seconds)

    @classmethod
    def garbage(
        cls, content_type: str = "image/webp", body: bytes = b"RIFF\x00\x00not-an-image"
    ) -> Answer:
        """200 with an image content type and bytes that decode to nothing."""
        return cls(Kind.RAW, 200, body, content_type)

    @classmethod
    def html(cls) -> Answer:
        """200 with a text/html page instead of an image (a captive portal, a proxy)."""
        return cls(Kind.RAW, 200, b"<html><body>Service page</body></html>", "text/html")


@dataclass
class SegmindCall:
    """One request the stand-in received. `status` is None while it is being answered and
    when it was hung up on; times are `time.monotonic()`."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    raw_body: bytes
    body: dict[str, Any] | None  # the JSON object, None when the body was not one
    arrived_at: float
    status: int | None = None
    content_type: str | None = None
    answer: bytes = b""
    answered_at: float | None = None

    @property
    def seed(self) -> int:
        assert self.body is not None
        seed: int = self.body["seed"]
        return seed

    @property
    def processing_ms(self) -> float | None:
        """The stand-in's own time on this request, from arrival to the last byte sent."""
        if self.answered_at is None:
            return None
        return (self.answered_at - self.arrived_at) * 1000


SubjectFetcher = Callable[[str], bytes]


def fetch_over_http(url: str, timeout_s: float = 5.0) -> bytes:
    """How the stand-in fetches a subject_image URL by default (as Segmind would)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        data: bytes = response.read()
    return data


class SubjectProblem(Exception):
    """subject_image could not be read as an image."""


class SegmindStandIn(ThreadedServer):
    """`url` for `RELIGHT_SEGMIND_BASE_URL`; `script`/`always` to misbehave; `calls()` to look.

    `fetch_subject` fetches URL subjects (replace it to reach an in-process app);
    `render_delay_s` adds model time to every image answer."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        credits: Decimal = Decimal(1000),
        cost_per_image: Decimal = Decimal(1),
        render_delay_s: float = 0.0,
        fetch_subject: SubjectFetcher = fetch_over_http,
    ) -> None:
        self.api_key = api_key
        self.credits = credits
        self.cost_per_image = cost_per_image
        self.render_delay_s = render_delay_s
        self.fetch_subject = fetch_subject
        self.subject_problems: list[str] = []
        self._lock = threading.Lock()
        self._script: deque[Answer] = deque()
        self._fallback = Answer.image()
        self._calls: list[SegmindCall] = []
        self._hang_ups: list[float] = []
        self._stopping = threading.Event()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                stand_in._handle(self)

            def do_GET(self) -> None:
                stand_in._handle(self)

        self._listen(Handler, poll_interval=0.05)

    # --- the test's side --------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL (what RELIGHT_SEGMIND_BASE_URL takes)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return self.url + API_PATH

    def script(self, answers: Iterable[Answer]) -> None:
        """Answer the next valid calls with `answers`, in order (then `always`'s answer)."""
        with self._lock:
            self._script.extend(answers)

    def always(self, answer: Answer) -> None:
        """What every valid call gets once the script is spent (`Answer.image()` at first)."""
        with self._lock:
            self._fallback = answer

    def calls(self) -> list[SegmindCall]:
        """The requests so far, in arrival order."""
        with self._lock:
            return sorted(self._calls, key=lambda call: call.arrived_at)

    def remaining_credits(self) -> Decimal:
        with self._lock:
            return self.credits

    def stop(self) -> None:
        self._stopping.set()  # releases hanging answers
        super().stop()

    # --- the server's side ------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        call = SegmindCall(
            method=handler.command,
            path=handler.path,
            headers={name.lower(): value for name, value in handler.headers.items()},
            raw_body=raw,
            body=parsed if isinstance(parsed, dict) else None,
            arrived_at=time.monotonic(),
        )
        with self._lock:
            self._calls.append(call)
        answer = self._decide(handler, call)
        if answer.kind is Kind.HANG:
            self._hang(handler, answer.hang_s)
            handler.close_connection = True
            return
        if answer.kind is Kind.IMAGE:
            answer = self._render(call)
        self._send(handler, call, answer)

    def _hang(self, handler: BaseHTTPRequestHandler, seconds: float) -> None:
        """Say nothing for `seconds`, noting when the caller hangs up first (`hang_ups()`)."""
        deadline = time.monotonic() + seconds
        connection = handler.connection
        while not self._stopping.wait(0.02) and time.monotonic() < deadline:
            readable, _, _ = select.select([connection], [], [], 0)
            if readable and connection.recv(1, socket.MSG_PEEK) == b"":
                with self._lock:
                    self._hang_ups.append(time.monotonic())
                return

    def hang_ups(self) -> list[float]:
        """When callers left a hanging answer before it ended (monotonic clock)."""
        with self._lock:
            return list(self._hang_ups)

    def _decide(self, handler: BaseHTTPRequestHandler, call: SegmindCall) -> Answer:
        """Checks in Segmind's order: route, API key, body; then the script."""
        if call.path.split("?")[0] != API_PATH:
            return Answer.error(404, "Not found")
        if handler.command != "POST":
            return Answer.error(405, "Method not allowed")
        if call.headers.get("x-api-key") != self.api_key:
            return Answer.error(401)
        if call.body is None:
            return Answer.error(422, "the body must be a JSON object")
        problems = validate_body(call.body)
        if problems:
            return Answer(Kind.ERROR, 422, json.dumps({"error": "; ".join(problems)}).encode())
        with self._lock:
            return self._script.popleft() if self._script else self._fallback

    def _render(self, call: SegmindCall) -> Answer:
        assert call.body is not None
        try:
            self._check_subject(str(call.body["subject_image"]))
        except SubjectProblem as exc:
            with self._lock:
                self.subject_problems.append(str(exc))
            return Answer.error(400, f"subject_image: {exc}")
        with self._lock:
            if self.credits < self.cost_per_image:
                return Answer.error(406)
        if self.render_delay_s:
            time.sleep(self.render_delay_s)
        data, content_type = render_image(call.body)
        with self._lock:
            self.credits -= self.cost_per_image
            credits = self.credits
        return Answer(
            Kind.RAW, 200, data, content_type, headers={"x-remaining-credits": str(credits)}
        )

    def _check_subject(self, subject: str) -> None:
        if subject.startswith(("http://", "https://")):
            try:
                data = self.fetch_subject(subject)
            except Exception as exc:
                raise SubjectProblem(f"could not fetch {subject}: {exc!r}") from exc
        else:
            payload = DATA_URL.sub("", subject, count=1)
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise SubjectProblem("neither a URL nor valid base64") from exc
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
        except Exception as exc:
            raise SubjectProblem("not an image") from exc

    def _send(self, handler: BaseHTTPRequestHandler, call: SegmindCall, answer: Answer) -> None:
        try:
            handler.send_response(answer.status)
            handler.send_header("Content-Type", answer.content_type)
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(answer.body)))
            handler.end_headers()
            handler.wfile.write(answer.body)
            handler.wfile.flush()
        finally:
            with self._lock:
                call.status = answer.status
                call.content_type = answer.content_type
                call.answer = answer.body
                call.answered_at = time.monotonic()


# --- wiring Relight to a stand-in ---------------------------------------------------------------

TEST_SERVER = "http://testserver"


def segmind_settings(base: Settings, stand_in: SegmindStandIn, **overrides: Any) -> Settings:
    """`base` with the segmind backend pointed at `stand_in`, short timeouts and backoff."""
    return base.model_copy(
        update={
            "segmind_api_key": stand_in.api_key,
            "segmind_base_url": stand_in.url,
            "segmind_timeout_s": 1.0,
            "retry_backoff_s": 0.05,
            **overrides,
        }
    )


@contextlib.asynccontextmanager
async def relight_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API app for `settings` (lifespan included), behind an ASGI httpx client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=TEST_SERVER) as client:
            yield client


async def run_burst_worker(settings: Settings) -> None:
    """Run a worker for `settings` until the queue is empty, deferred retries included."""
    worker = build_worker(settings, burst=True, poll_delay=0, handle_signals=False)
    try:
        await worker.async_run()
    finally:
        await worker.close()


@contextlib.asynccontextmanager
async def background_worker(settings: Settings) -> AsyncIterator[None]:
    """A worker for `settings` polling in the background while the block runs."""
    worker = build_worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()
