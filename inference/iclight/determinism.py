"""Whether one seed gives the same pixels every time on a node (`RELIGHT_NODE_DETERMINISTIC`).

Off (the default, for speed): on CUDA cuDNN autotunes its kernels (`cudnn.benchmark`), whose
choice can differ between processes and runs, so the same seed may give slightly different
pixels on another node process or after a restart. On: autotuning off, cuDNN's deterministic
kernels, and PyTorch's deterministic algorithms where they exist (warning where none does),
at some cost in speed. The flags are process-wide, which is why they are a node setting rather
than a per-request option. Either way a CPU node and a GPU node give different images for one
seed: they draw the noise with different generators and compute in other precisions.
"""

from __future__ import annotations

import os

import torch


def configure_determinism(deterministic: bool, *, autotune: bool) -> None:
    """Set torch's process-wide flags: deterministic, or (on CUDA, `autotune`) cuDNN
    autotuning for the fixed shapes of each request size."""
    if deterministic:
        # cuBLAS needs a fixed workspace for deterministic results (read at its first use).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif autotune:
        torch.backends.cudnn.benchmark = True
