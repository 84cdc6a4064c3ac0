"""RELIGHT_NODE_DETERMINISTIC: the node's engine sets torch's process-wide flags for
reproducible pixels (off by default: cuDNN autotuning on CUDA)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from inference.iclight.determinism import configure_determinism
from inference.node.engines import load_engine
from inference.node.settings import NodeSettings


@pytest.fixture
def torch_flags() -> Iterator[None]:
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def test_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELIGHT_NODE_DETERMINISTIC", raising=False)
    assert NodeSettings().deterministic is False
    monkeypatch.setenv("RELIGHT_NODE_DETERMINISTIC", "true")
    assert NodeSettings().deterministic is True


def test_the_setting_makes_the_engine_deterministic(
    tiny_model_dir: Path, torch_flags: None
) -> None:
    torch.backends.cudnn.benchmark = True
    torch.use_deterministic_algorithms(False)
    load_engine(NodeSettings(model_dir=tiny_model_dir, device="cpu", deterministic=True))
    assert torch.backends.cudnn.benchmark is False
    assert torch.backends.cudnn.deterministic is True
    assert torch.are_deterministic_algorithms_enabled()


def test_without_it_a_cuda_engine_autotunes(torch_flags: None) -> None:
    torch.backends.cudnn.benchmark = False
    configure_determinism(False, autotune=True)
    assert torch.backends.cudnn.benchmark is True
    assert not torch.are_deterministic_algorithms_enabled()
    torch.backends.cudnn.benchmark = False
    configure_determinism(False, autotune=False)  # the CPU, or optimisations off
    assert torch.backends.cudnn.benchmark is False
