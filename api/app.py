"""The gateway application: routes, error handlers, and the resources of its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts

from api.body import submit_form_schema
from api.cors import PublicCors
from api.deps import route_scopes
from api.docs import install_docs
from api.errors import install_error_handlers
from api.limits import RequestLimits
from api.middleware import HttpMetrics, RateLimitHeaders, RequestId
from api.responses import OrjsonResponse
from api.routes import (
    account,
    admin,
    batches,
    health,
    keys,
    metrics,
    relight,
    requests,
    webhooks,
)
from api.signin_throttle import SigninThrottle
from api.state import AppState
from api.ui.actions import router as ui_actions
from api.ui.routes import install_ui
from relight import __version__
from relight.batches.schemas import BatchBody
from relight.core.config import Settings, get_settings
from relight.core.db import autocommit_engine, create_engine, create_sessionmaker, listen_dsn
from relight.core.ratelimit import RateLimiter
from relight.core.redis_url import open_redis, parse_sentinel_url
from relight.core.storage import open_storage
from relight.jobs.events import JobWaiter
from relight.jobs.queue import deserialize_job, redis_retry_options, serialize_job
from relight.jobs.schemas import SubmitBody
from relight.tenants.auth_cache import AuthCache

DESCRIPTION = """
Relight relights images with IC-Light. It is a drop-in replacement for Segmind's `ic-light`
API (same parameters, defaults, `x-api-key` header and status codes) with an asynchronous v2
API on top: request ids, polling, listing, cancel, idempotency and signed output URLs.
"""

# In the order their routes appear in the OpenAPI document.
ROUTERS: tuple[APIRouter, ...] = (
    relight.router,
    requests.router,
    batches.router,
    webhooks.router,
    account.router,
    keys.router,
    admin.router,
    health.router,
    metrics.router,
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_app_state(settings) as state:
            app.state.relight = state
            yield

    app = FastAPI(
        title="Relight",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        # Served by install_docs, with local assets.
        docs_url=None,
        redoc_url=None,
        # Operation ids are the route functions' names (`submit_relight`, `get_request`, ...):
        # what generated clients name their methods.
        generate_unique_id_function=operation_id,
    )
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(HttpMetrics)
    # Inside the metrics (its refusals are counted), before anything reads a body.
    app.add_middleware(RequestLimits, settings=settings)
    if settings.cors_origin_list:
        app.add_middleware(PublicCors, settings=settings)
    # Outermost, so every line logged while handling the request carries its id.
    app.add_middleware(RequestId)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    install_ui(app)
    # The page's actions, beside its views (api/ui/actions.py).
    app.include_router(ui_actions)
    install_openapi(app)
    install_docs(app)
    return app


@asynccontextmanager
async def open_app_state(settings: Settings) -> AsyncIterator[AppState]:
    """The api process's resources (database pool, Redis pool, waiter, auth cache) while the
    block runs; closed in reverse on the way out."""
    # A fixed pool (no overflow): a burst queues for a connection instead of opening and
    # closing extra ones, and each api process holds a known number of them. No pre-ping
    # (three round trips per checkout with asyncpg): after Postgres drops our connections,
    # the first request to meet one answers 503 with Retry-After and the pool is renewed.
    engine = create_engine(settings, max_overflow=0, pre_ping=False)
    redis = await open_queue_redis(settings)
    waiter = JobWaiter(redis, settings.queue_name)
    await waiter.start()
    auth_cache = AuthCache(settings.auth_cache_s, listen_dsn(settings))
    await auth_cache.start()
    state = AppState(
        settings=settings,
        engine=engine,
        sessionmaker=create_sessionmaker(engine),
        autocommit_sessionmaker=create_sessionmaker(autocommit_engine(engine, settings)),
        redis=redis,
        storage=open_storage(settings),
        waiter=waiter,
        limiter=RateLimiter(redis, f"{settings.queue_name}:ratelimit"),
        signin_throttle=SigninThrottle(settings, redis),
        auth_cache=auth_cache,
    )
    try:
        yield state
    finally:
        await auth_cache.stop()
        await waiter.stop()
        await redis.aclose()
        await engine.dispose()


async def open_queue_redis(settings: Settings) -> ArqRedis:
    """arq's client of `RELIGHT_REDIS_URL`; through Sentinel, the primary it names, asked again
    after a failover (arq's own Sentinel support would drop the retry options)."""
    if parse_sentinel_url(settings.redis_url) is None:
        return await create_pool(
            replace(RedisSettings.from_dsn(settings.redis_url), **redis_retry_options()),
            job_serializer=serialize_job,
            job_deserializer=deserialize_job,
            default_queue_name=settings.queue_name,
        )
    redis = open_redis(settings.redis_url, ArqRedis, **redis_retry_options())
    redis.job_serializer = serialize_job
    redis.job_deserializer = deserialize_job
    redis.default_queue_name = settings.queue_name
    await redis.ping()
    return redis


def operation_id(route: APIRoute) -> str:
    return route.name


def describe_scopes(app: FastAPI, schema: dict[str, Any]) -> None:
    """Mark each operation behind an API key with the scope its key needs:
    `x-required-scope`, and a line of its description."""
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        for scope in route_scopes(route.dependant):
            for method in route.methods or ():
                operation = schema["paths"].get(route.path_format, {}).get(method.lower())
                if operation is None:
                    continue
                operation["x-required-scope"] = scope.value
                needs = f"Needs an API key with the `{scope.value}` scope."
                operation["description"] = (
                    f"{operation['description']}\n\n{needs}"
                    if operation.get("description")
                    else needs
                )


def install_openapi(app: FastAPI) -> None:
    """Add the submit bodies' schemas: the submit routes read the body themselves (JSON or
    multipart), so FastAPI does not see the models their `requestBody` refers to."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            body = SubmitBody.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(body.pop("$defs", {}))
            schemas["SubmitBody"] = body
            schemas["SubmitForm"] = submit_form_schema(body)
            batch = BatchBody.model_json_schema(ref_template="#/components/schemas/{model}")
            # Its items are SubmitBody, defined once, above.
            batch_defs = batch.pop("$defs", {})
            batch_defs.pop("SubmitBody", None)
            schemas.update(batch_defs)
            schemas["BatchBody"] = batch
            describe_scopes(app, schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
