"""Liveness and readiness probes.

Readiness is what a load balancer needs to know: whether this process can take requests. It
needs Postgres (every request authenticates and every job lives there); it does not need Redis
to take them: the rate limiter fails open, a job that cannot be queued stays `queued` in
Postgres until the sweeper queues it, and waits and status streams re-read Postgres when their
notifications are lost. So a Redis blip is reported in `checks` but leaves the api ready,
instead of emptying the Service of every replica at once.

For the same reason a pool whose every connection is in use (overload, every replica alike)
reads `busy`, not unavailable: its connections are out doing requests' work, so Postgres
answers; the requests that wait too long for one are answered 503 `database_busy` themselves.
Taking the replica out would only move its load onto the others."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import StateDep
from api.responses import OrjsonResponse
from relight.core.db import ping, pool_saturated

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(description="each dependency: `ok` or why it is unavailable")


@router.get("/healthz", summary="Liveness: the process answers", response_model=Liveness)
async def healthz() -> Liveness:
    return Liveness(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: Postgres answers (Redis is reported, not required)",
    response_model=None,
    responses={
        200: {
            "model": Readiness,
            "description": "Postgres answers; `checks.redis` says whether Redis does",
        },
        503: {"model": Readiness, "description": "Postgres does not answer"},
    },
)
async def readyz(state: StateDep) -> OrjsonResponse:
    checks: dict[str, str] = {}

    async def check_database() -> None:
        await ping(state.engine)

    async def check_redis() -> None:
        await state.redis.ping()

    for name, probe in (("database", check_database), ("redis", check_redis)):
        try:
            await asyncio.wait_for(probe(), timeout=2)
            checks[name] = "ok"
        except Exception as exc:
            busy = name == "database" and pool_saturated(state.engine)
            checks[name] = busy or f"unavailable: {exc.__class__.__name__}"
    ready = checks["database"] == "ok" or checks["database"].startswith("busy")
    return OrjsonResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )
