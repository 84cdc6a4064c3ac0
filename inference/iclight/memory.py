"""Running out of GPU memory: an error of the request, freed at once, never the node's fault.

An out-of-memory error raised inside a denoising pass carries a traceback whose frames hold
the pass's activations (latents, UNet inputs); stored on a shared object (a batch member's
`PassJob.error`, itself reachable from those frames) it forms a reference cycle, and the
memory stays allocated until Python's cyclic collector happens to run. So the engine never
keeps it: `out_of_memory` drops its traceback and gives a fresh `DeviceOutOfMemory` (no frames
attached) in its place, which the node answers as a distinct code that workers do not count
against the node's circuit breaker (relight/nodes/client.py: `FailureKind.TOO_LARGE`).
"""

from __future__ import annotations

import torch

from relight.core.errors import RelightError

# torch.cuda.OutOfMemoryError is the same class; it exists on CPU-only builds too.
TorchOutOfMemory = torch.OutOfMemoryError


class DeviceOutOfMemory(RelightError):
    """The request did not fit in the device's memory (at the node's current load)."""

    status_code = 507
    code = "out_of_memory"


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (TorchOutOfMemory, DeviceOutOfMemory))


def out_of_memory(exc: BaseException) -> DeviceOutOfMemory:
    """A traceback-free `DeviceOutOfMemory` for `exc`; `exc`'s own traceback is dropped, so
    the frames it held (and their tensors) are freed as soon as `exc` is."""
    exc.__traceback__ = None
    exc.__context__ = None
    return DeviceOutOfMemory(
        "the request did not fit in the GPU's memory: fewer or smaller images fit"
    )


def release_cached_memory(device: torch.device) -> None:
    """Hand the caching allocator's free blocks back (after a failure, not on the hot path)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
