"""`relight-node`: a GPU inference node. Serves one engine (`RELIGHT_NODE_ENGINE`) over HTTP
and announces itself in Redis so workers find it; see relight/nodes/wire.py for the wire
format.

    POST /v1/relight   params + subject (+ background) → images (NDJSON progress, or JSON)
    GET  /healthz      engine, model, model digest, matting, device, capacity, in-flight,
                       backgrounds, batching, version
    GET  /metrics      Prometheus: renders, durations, batch sizes, refusals, GPU memory
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hmac
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from inference.engines.base import RelightEngine
from inference.node import metrics
from inference.node.admission import LatentBudget
from inference.node.engines import engine_device, load_engine, warm_up
from inference.node.heartbeat import Heartbeat
from inference.node.model_identity import ModelIdentity, checked_model_digest, matting_name
from inference.node.service import NodeService, RenderAbandoned
from inference.node.settings import NodeSettings
from relight import __version__
from relight.core.errors import RelightError, Unauthorized
from relight.core.logs import configure_logging
from relight.core.redis_url import open_redis
from relight.nodes.registry import NodeInfo
from relight.nodes.wire import HEALTH_PATH, NDJSON, RELIGHT_PATH, NodeHealth, NodeRequest

# Nothing imported from here on reaches SQLAlchemy, asyncpg, alembic or arq: the node extra
# installs none of them (tests/inference/test_node_dependencies.py).

logger = logging.getLogger(__name__)

# How often a plain JSON request's render looks whether its client is still there.
DISCONNECT_CHECK_S = 0.25
# A quiet stream still says something this often, so workers can tell slow from dead.
PING_S = 5.0

router = APIRouter()


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """What `create_node_app` was given, kept on `app.state.node` for the handlers."""

    settings: NodeSettings
    node_id: str
    url: str
    # Loaded at startup from the settings when None (tests pass one ready-made).
    engine: RelightEngine | None = None


def create_node_app(
    settings: NodeSettings, *, node_id: str, url: str, engine: RelightEngine | None = None
) -> FastAPI:
    """The node's ASGI app; the engine is loaded at startup unless one is given."""
    app = FastAPI(title="Relight GPU node", version=__version__, lifespan=lifespan)
    app.state.node = NodeConfig(settings=settings, node_id=node_id, url=url, engine=engine)
    app.exception_handler(RelightError)(relight_error)
    app.exception_handler(RequestValidationError)(invalid_request)
    app.include_router(router)
    return app


def _config(app: FastAPI) -> NodeConfig:
    config: NodeConfig = app.state.node
    return config


def _service(app: FastAPI) -> NodeService:
    service: NodeService = app.state.service
    return service


def _identity(app: FastAPI) -> ModelIdentity:
    identity: ModelIdentity = app.state.model_identity
    return identity


def describe(app: FastAPI) -> NodeInfo:
    """The node as its heartbeat announces it."""
    config = _config(app)
    service = _service(app)
    identity = _identity(app)
    return NodeInfo(
        id=config.node_id,
        url=config.url,
        capacity=config.settings.capacity,
        engine=service.engine.name,
        model=service.engine.model,
        device=engine_device(service.engine),
        in_flight=service.in_flight,
        version=__version__,
        backgrounds=service.engine.serves_backgrounds,
        model_digest=identity.digest,
        matting=identity.matting,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Check the model folder, load the engine, open the service's render threads, and beat in
    Redis while the app runs."""
    config = _config(app)
    settings = config.settings
    # Before loading: a folder with problems stops the start with all of them listed.
    digest = await asyncio.to_thread(checked_model_digest, settings)
    loaded = config.engine
    if loaded is None:
        loaded = await asyncio.to_thread(load_engine, settings)
    app.state.model_identity = ModelIdentity(
        digest=digest, matting=matting_name(loaded, settings.matting_model)
    )
    if settings.warm_up:
        # Before the first heartbeat: workers find the node only once it renders at full speed.
        await asyncio.to_thread(warm_up, loaded)
    heartbeat: Heartbeat | None = None
    service = NodeService(
        loaded,
        node_id=config.node_id,
        capacity=settings.capacity,
        max_input_bytes=settings.max_input_bytes,
        max_input_pixels=settings.max_input_pixels,
        model_digest=digest,
        latent_budget=LatentBudget(settings.latent_budget),
        on_change=lambda: heartbeat.changed() if heartbeat is not None else None,
    )
    app.state.service = service
    redis = open_redis(settings.redis_url) if settings.redis_url else None
    if redis is not None:
        heartbeat = Heartbeat(
            redis,
            settings.namespace,
            lambda: describe(app),
            interval_s=settings.heartbeat_s,
            ttl_s=settings.heartbeat_ttl_s,
        )
        await heartbeat.start()
    logger.info(
        "node %s serving %s (%s, digest %s) at %s, capacity %d",
        config.node_id,
        loaded.name,
        loaded.model,
        digest,
        config.url,
        settings.capacity,
    )
    try:
        yield
    finally:
        if heartbeat is not None:
            await heartbeat.stop()
        if redis is not None:
            await redis.aclose()
        await asyncio.to_thread(service.close)


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Any:
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


async def relight_error(request: Request, exc: RelightError) -> Response:
    headers = {}
    if exc.status_code == 503:
        headers["Retry-After"] = str(exc.extra.get("retry_after", 1))
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    response: Response = _error(exc.status_code, exc.message, exc.code, headers)
    return response


async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    field = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    response: Response = JSONResponse(
        {"error": message, "code": "validation_error", "field": field or None},
        status_code=422,
    )
    return response


def authorize(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Without RELIGHT_NODE_TOKEN anyone may call; with it, only a bearer of the token."""
    token = _config(request.app).settings.token
    if token is None:
        return
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), token.encode()
    ):
        raise Unauthorized("a valid `Authorization: Bearer <RELIGHT_NODE_TOKEN>` is required")


def _max_batch_images(engine: RelightEngine) -> int:
    """Images per denoising pass the engine batches (1: it does not batch)."""
    batcher = getattr(engine, "batcher", None)
    return int(batcher.max_images) if batcher is not None else 1


@router.get(HEALTH_PATH, response_model=NodeHealth)
async def healthz(request: Request) -> NodeHealth:
    info = describe(request.app)
    return NodeHealth(
        status="ok",
        id=info.id,
        url=info.url,
        engine=info.engine or "",
        model=info.model or "",
        device=info.device or "cpu",
        capacity=info.capacity,
        in_flight=info.in_flight,
        version=__version__,
        backgrounds=info.backgrounds,
        model_digest=info.model_digest,
        matting=info.matting,
        max_batch_images=_max_batch_images(_service(request.app).engine),
    )


@router.get("/metrics", include_in_schema=False)
async def prometheus(request: Request) -> Response:
    service = _service(request.app)
    body = metrics.render(lambda: service.in_flight, engine_device(service.engine))
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


class RenderEvents:
    """Between the engine's thread and the response: progress fractions flow to the event
    loop (None once the render is done), and a stop flows back once the client went away."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[float | None] = asyncio.Queue()
        self.abandoned = threading.Event()

    def progress(self, fraction: float) -> None:
        # The engine calls this between stages / denoising steps: the place to stop once
        # the worker went away (a canceled job), so the render thread is free again at once.
        if self.abandoned.is_set():
            raise RenderAbandoned("the worker closed the stream")
        self.loop.call_soon_threadsafe(self.queue.put_nowait, fraction)

    def finished(self, _future: concurrent.futures.Future[Any]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


@router.post(RELIGHT_PATH, dependencies=[Depends(authorize)])
async def relight(
    request: Request, body: NodeRequest, accept: Annotated[str | None, Header()] = None
) -> Response:
    events = RenderEvents(asyncio.get_running_loop())
    future = await _service(request.app).start(body, events.progress)
    future.add_done_callback(events.finished)
    if NDJSON not in (accept or ""):
        try:
            result = await _result_unless_abandoned(request, events, future)
        except RenderAbandoned:
            # Nobody is there to read an answer; 499 is what proxies log for this.
            logger.info("render abandoned: the client hung up")
            return Response(status_code=499)
        return Response(result.model_dump_json(), media_type="application/json")
    stream = _stream(_config(request.app).node_id, events, future)
    return StreamingResponse(stream, media_type=NDJSON)


async def _result_unless_abandoned(
    request: Request, events: RenderEvents, future: concurrent.futures.Future[Any]
) -> Any:
    """The render's result for a plain JSON client; if the client hangs up first (it gave up
    or its job was canceled), the render is stopped at its next step and its render thread
    freed, as for a stream."""
    waiting = asyncio.ensure_future(asyncio.wrap_future(future))
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_CHECK_S)
        if done:
            return waiting.result()
        if await request.is_disconnected():
            events.abandoned.set()
            return await waiting  # RenderAbandoned at the next step


def _line(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event) + b"\n"


async def _stream(
    node_id: str, events: RenderEvents, future: concurrent.futures.Future[Any]
) -> AsyncIterator[bytes]:
    """The NDJSON answer: started, progress (and pings while quiet), then result or error."""
    try:
        yield _line({"event": "started", "node": node_id})
        while True:
            try:
                value = await asyncio.wait_for(events.queue.get(), PING_S)
            except TimeoutError:
                yield _line({"event": "ping"})
                continue
            if value is None:
                break
            yield _line({"event": "progress", "progress": round(value, 4)})
    finally:
        # Left early: the client disconnected (a worker abandoning a canceled job).
        if not future.done():
            events.abandoned.set()
    error = future.exception()
    if error is None:
        yield _line({"event": "result", **future.result().model_dump(mode="json")})
    elif isinstance(error, RelightError):
        yield _line({"event": "error", "error": error.message, "code": error.code})
    else:
        logger.error("engine failed", exc_info=error)
        yield _line(
            {
                "event": "error",
                "error": f"the engine failed ({error.__class__.__name__})",
                "code": "engine_error",
            }
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="relight-node", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port to bind (default 9000)")
    args = parser.parse_args(argv)
    settings = NodeSettings()
    if settings.engine == "iclight" and settings.model_dir is None:
        parser.error(
            "the iclight engine needs RELIGHT_NODE_MODEL_DIR (or RELIGHT_NODE_ENGINE=classic)"
        )
    configure_logging(settings.log_level, settings.log_format)
    app = create_node_app(
        settings, node_id=settings.node_id(args.port), url=settings.url(args.host, args.port)
    )
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
