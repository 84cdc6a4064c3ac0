"""`GET /metrics`: this api process's Prometheus metrics, plus the queue depth read from Redis."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import StateDep
from relight import metrics

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "the metrics"}},
)
async def get_metrics(state: StateDep) -> Response:
    await metrics.refresh_queue_depth(state.redis, state.settings.queue_name)
    return Response(content=metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)
