"""Which backends are available: `relight.backends.availability`, the one rule that submit, the
submit route, the worker (which backends it builds) and the runner apply."""

from __future__ import annotations

import pytest

from relight.backends.attempts import BackendCall
from relight.backends.availability import available_backends, available_to_run
from relight.backends.render_backend import BackendResult, JobInput, ProgressCallback, RenderBackend
from relight.core.config import Settings
from relight.core.params import Backend, RelightParams

GPU, SEGMIND, LOCAL, AUTO = (
    Backend.GPU,
    Backend.SEGMIND,
    Backend.LOCAL,
    Backend.AUTO,
)


def test_gpu_is_available_when_nodes_are_listed_or_beating() -> None:
    assert GPU not in available_backends(Settings())
    assert GPU in available_backends(Settings(), live_gpu_nodes=True)
    assert GPU in available_backends(Settings(gpu_nodes="http://gpu-1:9000"))
    no_discovery = Settings(gpu_discovery=False)
    assert GPU not in available_backends(no_discovery, live_gpu_nodes=True)


def test_local_when_enabled_and_segmind_with_a_key() -> None:
    assert available_backends(Settings(local_backend_enabled=True, segmind_api_key=None)) == {LOCAL}
    assert available_backends(Settings(local_backend_enabled=False, segmind_api_key="sk")) == {
        SEGMIND
    }


def test_only_gpu_relights_onto_a_background() -> None:
    everything = Settings(
        local_backend_enabled=True, segmind_api_key="sk", gpu_nodes="http://gpu-1:9000"
    )
    assert available_backends(everything) == {GPU, SEGMIND, LOCAL}
    assert available_backends(everything, backgrounds=True) == {GPU}
    assert available_backends(Settings(gpu_discovery=False), backgrounds=True) == set()


class StandIn:
    """A backend that renders nothing; `nodes` says whether it has something to run on."""

    def __init__(self, name: Backend, nodes: bool | None = None) -> None:
        self.name = name
        self.nodes = nodes

    async def render(
        self,
        job_input: JobInput,
        params: RelightParams,
        seed: int,
        calls: list[BackendCall],
        progress: ProgressCallback | None = None,
    ) -> BackendResult:
        raise NotImplementedError


class GpuStandIn(StandIn):
    async def available(self) -> bool:
        return bool(self.nodes)


@pytest.mark.parametrize(
    ("requested", "nodes", "expected"),
    [
        pytest.param(AUTO, False, {LOCAL}, id="auto-skips-gpu-without-nodes"),
        pytest.param(AUTO, True, {GPU, LOCAL}, id="auto-with-nodes"),
        pytest.param(GPU, False, {GPU, LOCAL}, id="named-gpu-waits-for-a-node"),
    ],
)
async def test_the_runner_routes_only_to_backends_it_runs_and_can_use_now(
    requested: Backend, nodes: bool, expected: set[Backend]
) -> None:
    settings = Settings(local_backend_enabled=True, segmind_api_key="sk", gpu_discovery=True)
    # No segmind backend in this worker, though the settings allow one.
    backends: dict[Backend, RenderBackend] = {
        LOCAL: StandIn(LOCAL),
        GPU: GpuStandIn(GPU, nodes),
    }
    available = await available_to_run(settings, backends, requested=requested, backgrounds=False)
    assert available == expected
    with_background = await available_to_run(
        settings, backends, requested=requested, backgrounds=True
    )
    assert with_background == expected & {GPU}


async def test_a_runner_without_backends_has_none_available() -> None:
    assert await available_to_run(Settings(), {}, requested=AUTO, backgrounds=False) == set()
