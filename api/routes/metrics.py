"""`GET /metrics`: this api's Prometheus metrics, plus queue gauges and node slots from Redis."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Response

from api.deps import StateDep
from relight.core import metrics
from relight.jobs.queue_counts import count_queue
from relight.nodes.slots import slots_in_use

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "the metrics"}},
)
async def get_metrics(state: StateDep) -> Response:
    await metrics.refresh_from_redis(
        partial(count_queue, state.redis, state.settings.queue_name),
        partial(slots_in_use, state.redis, state.settings.gpu_namespace),
    )
    return Response(content=metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)
