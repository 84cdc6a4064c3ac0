"""Which backends are available: the one rule that submit, the submit route, the worker (which
backends it builds) and the job runner (which it may route to now) all apply.

A backend is available when this deployment is configured for it: `local` when enabled,
`segmind` with an API key, `gpu` when nodes are listed (RELIGHT_GPU_NODES) or, with discovery
on, some node's heartbeat is live. A request that relights onto a background can only go to
`BACKGROUND_BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Mapping

from relight.backends.render_backend import RenderBackend, is_available
from relight.core.config import Settings
from relight.core.params import Backend

# The only backends that relight onto a background (IC-Light fbc on GPU nodes that have it);
# Segmind's ic-light has no such model and the classic CPU engine does not try.
BACKGROUND_BACKENDS = frozenset({Backend.GPU})


def available_backends(
    settings: Settings, *, live_gpu_nodes: bool = False, backgrounds: bool = False
) -> set[Backend]:
    """The backends available here; `auto` resolves among them.

    `live_gpu_nodes`: whether some GPU node's heartbeat is live (the caller looks it up:
    `relight.nodes.registry.discovered_gpu_nodes`). `backgrounds`: the request relights onto a
    background, so only `BACKGROUND_BACKENDS` count.
    """
    available: set[Backend] = set()
    if settings.local_backend_enabled:
        available.add(Backend.LOCAL)
    if settings.segmind_api_key:
        available.add(Backend.SEGMIND)
    if settings.static_gpu_nodes or (settings.gpu_discovery and live_gpu_nodes):
        available.add(Backend.GPU)
    if backgrounds:
        available &= BACKGROUND_BACKENDS
    return available


async def available_to_run(
    settings: Settings,
    backends: Mapping[Backend, RenderBackend],
    *,
    requested: Backend,
    backgrounds: bool,
) -> set[Backend]:
    """For the job runner: of the backends this worker runs, those `available_backends` allows
    now. Under `auto`, GPU nodes count only while some is listed or beating; a job that named a
    backend waits for it instead (its tries fail retryably until a node shows up)."""
    gpu = backends.get(Backend.GPU)
    live = requested is not Backend.AUTO or (gpu is not None and await is_available(gpu))
    usable = available_backends(settings, live_gpu_nodes=live, backgrounds=backgrounds)
    return usable & backends.keys()
