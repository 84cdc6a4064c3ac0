"""The node's own Prometheus metrics (`GET /metrics` on the node).

In a registry of the node's (the api's and workers' metrics module imports the database layer,
which a node does not install), with the process collectors. What an operator reads off it:
renders by outcome and how long they took, UNet passes by batch size (images and requests per
pass, seconds per denoising step), requests in flight, refusals because every render thread
was taken, and on CUDA the GPU memory in use and at its peak.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

RENDERS = Counter(
    "relight_node_renders_total",
    "Requests the node finished, by outcome (ok, rejected: bad input, error: the engine failed)",
    ["outcome"],
    registry=REGISTRY,
)
RENDER_SECONDS = Histogram(
    "relight_node_render_seconds",
    "Engine time of one request (both passes, VAE and text encoder, waiting for batch-mates)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300),
    registry=REGISTRY,
)
STEP_SECONDS = Histogram(
    "relight_node_step_seconds",
    "Wall time of one denoising step of a pass (one UNet batch), by batch",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
    registry=REGISTRY,
)
BATCH_IMAGES = Histogram(
    "relight_node_batch_images",
    "Images per denoising pass (requests batched together share one)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
    registry=REGISTRY,
)
BATCH_REQUESTS = Histogram(
    "relight_node_batch_requests",
    "Requests per denoising pass",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16),
    registry=REGISTRY,
)
BUSY_REFUSALS = Counter(
    "relight_node_busy_refusals_total",
    "Requests refused with 503 node_busy because every render thread was taken",
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("relight_node_in_flight", "Requests the node is running now", registry=REGISTRY)
GPU_MEMORY = Gauge(
    "relight_node_gpu_memory_bytes",
    "GPU memory held by torch on CUDA: in_use now, peak since start",
    ["kind"],
    registry=REGISTRY,
)


class PassMetrics:
    """The engine's batch observer: records every denoising pass."""

    def pass_ran(self, images: int, requests: int, steps: int, seconds: float) -> None:
        BATCH_IMAGES.observe(images)
        BATCH_REQUESTS.observe(requests)
        if steps > 0:
            STEP_SECONDS.observe(seconds / steps)


def render(in_flight: Callable[[], int], device: str) -> bytes:
    """The exposition text, with the gauges read now."""
    IN_FLIGHT.set(in_flight())
    if device.startswith("cuda"):
        import torch

        GPU_MEMORY.labels("in_use").set(torch.cuda.memory_allocated(device))
        GPU_MEMORY.labels("peak").set(torch.cuda.max_memory_allocated(device))
    return generate_latest(REGISTRY)
