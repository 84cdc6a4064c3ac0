"""The `gpu` backend: IC-Light on our GPU nodes (`relight-node`), through `GpuDispatcher`
(node discovery, slots across workers, circuit breakers and failover live beside it in
relight/nodes/, which builds on `relight.backends` and is never imported by it)."""

from __future__ import annotations

from relight.backends.attempts import BackendCall
from relight.backends.render_backend import BackendResult, JobInput, ProgressCallback
from relight.core.params import Backend, RelightParams
from relight.nodes.dispatch import GpuDispatcher


class GpuBackend:
    name = Backend.GPU

    def __init__(self, dispatcher: GpuDispatcher) -> None:
        self.dispatcher = dispatcher

    async def available(self) -> bool:
        """Some node is configured or beating; `auto` skips this backend otherwise."""
        return await self.dispatcher.available()

    async def render(
        self,
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        calls: list[BackendCall],
        progress: ProgressCallback | None = None,
    ) -> BackendResult:
        return await self.dispatcher.render(job_input, params, seed, calls, progress)
