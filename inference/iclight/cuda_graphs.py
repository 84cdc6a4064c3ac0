"""Replay the UNet as CUDA graphs: one capture per input shape, no Python per step after that.

At SD1.5's low-res size the GPU finishes a UNet step sooner than Python can launch its few
thousand kernels, so the eager UNet is launch-bound; a captured graph replays them in one call.
Graphs have fixed shapes and fixed input buffers, so there is one per (batch, latent size,
prompt length, dtype), kept in a small LRU cache and sharing one memory pool. Replays are
serialised by a lock per model (the buffers are shared), which costs nothing on one GPU, where
UNet steps run one after another anyway. Captures use thread-local capture mode, so other
threads may keep using the GPU (VAE, text encoder) meanwhile.

Three limits keep graphs cheap under dynamic batching:

- one capture at a time in the whole process (`CAPTURE_LOCK`): PyTorch supports one capture
  per process, whichever model (fc, fbc) wants it;
- batch sizes are bucketed (`batch_bucket`: 1, 2, 4, 8, …; the batch is padded with zero rows,
  whose outputs are dropped), so batches of 5, 6, 7 and 8 rows share one graph rather than
  each recapturing and evicting the others from the small cache;
- no graph above `MAX_GRAPH_LATENT_PIXELS` latent pixels: there a UNet step is long enough
  that launching is no bottleneck, and a graph's private memory pool would cost the most.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

GraphKey = tuple[tuple[int, ...], tuple[int, ...], torch.dtype]
# Eager runs before capture, on a side stream, so cuDNN autotuning and lazy init are done.
WARMUP_RUNS = 2
# Latents larger than this (1024×1024 images: 128×128 latents) run eagerly.
MAX_GRAPH_LATENT_PIXELS = 128 * 128
# PyTorch allows one CUDA graph capture per process at a time, across every model.
CAPTURE_LOCK = threading.Lock()


def batch_bucket(rows: int) -> int:
    """The batch size a graph is captured for: the next power of two from `rows`."""
    if rows < 1:
        raise ValueError("a batch has at least one row")
    return 1 << (rows - 1).bit_length()


@dataclass(slots=True)
class _Graph:
    graph: torch.cuda.CUDAGraph
    sample: torch.Tensor
    timestep: torch.Tensor
    hidden_states: torch.Tensor
    output: torch.Tensor


def _padded(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor
    padding = tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, padding])


class CudaGraphUNet:
    """Callable like `unet(sample, timestep, hidden_states)` returning the noise prediction."""

    def __init__(
        self,
        unet: torch.nn.Module,
        max_graphs: int = 8,
        max_latent_pixels: int = MAX_GRAPH_LATENT_PIXELS,
    ) -> None:
        self._unet = unet
        self._max_graphs = max_graphs
        self._max_latent_pixels = max_latent_pixels
        self._graphs: OrderedDict[GraphKey, _Graph] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: Any = None  # the graphs' shared memory pool, made at the first capture

    def __call__(
        self, sample: torch.Tensor, timestep: torch.Tensor, hidden_states: torch.Tensor
    ) -> torch.Tensor:
        if sample.shape[-2] * sample.shape[-1] > self._max_latent_pixels:
            return self._run(sample, timestep, hidden_states)
        rows = sample.shape[0]
        bucket = batch_bucket(rows)
        sample = _padded(sample, bucket)
        hidden_states = _padded(hidden_states, bucket)
        key: GraphKey = (tuple(sample.shape), tuple(hidden_states.shape), sample.dtype)
        with self._lock:
            graph = self._graphs.get(key)
            if graph is None:
                with CAPTURE_LOCK:
                    graph = self._capture(sample, timestep, hidden_states)
                self._graphs[key] = graph
                while len(self._graphs) > self._max_graphs:
                    self._graphs.popitem(last=False)
            else:
                self._graphs.move_to_end(key)
            return self._replay(graph, sample, timestep, hidden_states)[:rows]

    @property
    def shapes(self) -> list[GraphKey]:
        """The input shapes with a captured graph, least recently used first."""
        return list(self._graphs)

    def _run(
        self, sample: torch.Tensor, timestep: torch.Tensor, hidden: torch.Tensor
    ) -> torch.Tensor:
        out: torch.Tensor = self._unet(
            sample, timestep, encoder_hidden_states=hidden, return_dict=False
        )[0]
        return out

    def _replay(
        self,
        graph: _Graph,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        hidden_states: torch.Tensor,
    ) -> torch.Tensor:
        graph.sample.copy_(sample)
        graph.timestep.copy_(timestep)
        graph.hidden_states.copy_(hidden_states)
        graph.graph.replay()
        # The output buffer is overwritten by the next replay: hand out a copy.
        return graph.output.clone()

    def _capture(
        self, sample: torch.Tensor, timestep: torch.Tensor, hidden_states: torch.Tensor
    ) -> _Graph:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
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
