"""Replay the UNet as CUDA graphs: one capture per input shape, no Python per step after that.

At SD1.5's low-res size the GPU finishes a UNet step sooner than Python can launch its few
thousand kernels, so the eager UNet is launch-bound; a captured graph replays them in one call.
Graphs have fixed shapes and fixed input buffers, so there is one per (batch, latent size,
prompt length, dtype), kept in a small LRU cache and sharing one memory pool. Replays are
serialised by a lock (the buffers are shared), which costs nothing on one GPU, where UNet
steps run one after another anyway. Captures use thread-local capture mode, so other threads
may keep using the GPU (VAE, text encoder) meanwhile.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

GraphKey = tuple[tuple[int, ...], tuple[int, ...], torch.dtype]
# Eager runs before capture, on a side stream, so cuDNN autotuning and lazy init are done.
WARMUP_RUNS = 2


@dataclass(slots=True)
class _Graph:
    graph: torch.cuda.CUDAGraph
    sample: torch.Tensor
    timestep: torch.Tensor
    hidden_states: torch.Tensor
    output: torch.Tensor


class CudaGraphUNet:
    """Callable like `unet(sample, timestep, hidden_states)` returning the noise prediction."""

    def __init__(self, unet: torch.nn.Module, max_graphs: int = 8) -> None:
        self._unet = unet
        self._max_graphs = max_graphs
        self._graphs: OrderedDict[GraphKey, _Graph] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = torch.cuda.graph_pool_handle()

    def __call__(
        self, sample: torch.Tensor, timestep: torch.Tensor, hidden_states: torch.Tensor
    ) -> torch.Tensor:
        key: GraphKey = (tuple(sample.shape), tuple(hidden_states.shape), sample.dtype)
        with self._lock:
            graph = self._graphs.get(key)
            if graph is None:
                graph = self._capture(sample, timestep, hidden_states)
                self._graphs[key] = graph
                while len(self._graphs) > self._max_graphs:
                    self._graphs.popitem(last=False)
            else:
                self._graphs.move_to_end(key)
            graph.sample.copy_(sample)
            graph.timestep.copy_(timestep)
            graph.hidden_states.copy_(hidden_states)
            graph.graph.replay()
            # The output buffer is overwritten by the next replay: hand out a copy.
            return graph.output.clone()

    def _run(
        self, sample: torch.Tensor, timestep: torch.Tensor, hidden: torch.Tensor
    ) -> torch.Tensor:
        out: torch.Tensor = self._unet(
            sample, timestep, encoder_hidden_states=hidden, return_dict=False
        )[0]
        return out

    def _capture(
        self, sample: torch.Tensor, timestep: torch.Tensor, hidden_states: torch.Tensor
    ) -> _Graph:
        static_sample = sample.clone()
        static_timestep = torch.as_tensor(timestep, device=sample.device).clone()
        static_hidden = hidden_states.clone()
        side = torch.cuda.Stream(device=sample.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(sample.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self._run(static_sample, static_timestep, static_hidden)
        torch.cuda.current_stream(sample.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            output = self._run(static_sample, static_timestep, static_hidden)
        return _Graph(graph, static_sample, static_timestep, static_hidden, output)
