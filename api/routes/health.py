"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import StateDep
from api.responses import OrjsonResponse
from relight.db import ping

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
    summary="Readiness: Postgres and Redis answer",
    response_model=None,
    responses={
        200: {"model": Readiness, "description": "Postgres and Redis answer"},
        503: {"model": Readiness, "description": "Postgres or Redis does not answer"},
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
            checks[name] = f"unavailable: {exc.__class__.__name__}"
    ready = all(value == "ok" for value in checks.values())
    return OrjsonResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )
