"""One merged IC-Light UNet on its device, called the fastest way the engine was asked for.

Eager by default (SDPA attention; on CUDA also fused QKV projections, channels-last memory and
cuDNN autotuning), or wrapped in `torch.compile`, or replayed as CUDA graphs. The engine keeps
one runner per model variant (fc, fbc), so both can be served from one process.
"""

from __future__ import annotations

import threading

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from inference.iclight.cuda_graphs import CudaGraphUNet


class UNetRunner:
    """Callable as `runner(sample, timestep, hidden_states)` → the noise prediction."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        *,
        device: torch.device,
        dtype: torch.dtype,
        optimize: bool,
        compile_unet: bool = False,
        cuda_graphs: bool = False,
    ) -> None:
        self.unet = unet.to(device=device, dtype=dtype)
        self.unet.set_attn_processor(AttnProcessor2_0())
        if optimize:
            self.unet.fuse_qkv_projections()
            self.unet.to(memory_format=torch.channels_last)
        self._module: torch.nn.Module = self.unet
        if compile_unet:
            self._module = torch.compile(self.unet)  # type: ignore[assignment]
        # Dynamo's first trace of a shape is not thread-safe; later calls run concurrently.
        self._compile_lock = threading.Lock() if compile_unet else None
        self._compiled_shapes: set[tuple[int, ...]] = set()
        self._graphs = CudaGraphUNet(self.unet) if cuda_graphs else None

    @property
    def fixed_shapes(self) -> bool:
        """Whether a batch size not seen before costs a CUDA graph capture or a recompile (so
        a pass keeps its batch size when a member leaves, rather than shrink mid-pass)."""
        return self._graphs is not None or self._compile_lock is not None

    def __call__(
        self, sample: torch.Tensor, timestep: torch.Tensor, hidden_states: torch.Tensor
    ) -> torch.Tensor:
        if self._graphs is not None:
            return self._graphs(sample, timestep, hidden_states)
        if self._compile_lock is not None:
            shape = (*sample.shape, hidden_states.shape[1])
            if shape not in self._compiled_shapes:
                with self._compile_lock:
                    out = self._module(
                        sample, timestep, encoder_hidden_states=hidden_states, return_dict=False
                    )[0]
                    self._compiled_shapes.add(shape)
                    return out  # type: ignore[no-any-return]
        result = self._module(
            sample, timestep, encoder_hidden_states=hidden_states, return_dict=False
        )
        return result[0]  # type: ignore[no-any-return]
