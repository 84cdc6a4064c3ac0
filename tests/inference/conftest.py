"""Shared by the engine and node tests: one tiny IC-Light model on disk per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from inference.iclight.weights import Variant
from inference.tiny_model import write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("iclight") / "model")


@pytest.fixture(scope="session")
def tiny_fc_and_fbc_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder with both the fc and the fbc offsets."""
    return write_tiny_model(
        tmp_path_factory.mktemp("iclight-both") / "model", variants=(Variant.FC, Variant.FBC)
    )


@pytest.fixture(scope="session")
def tiny_rmbg_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder with the fc and the fbc offsets and a tiny RMBG (`rmbg/`)."""
    return write_tiny_model(
        tmp_path_factory.mktemp("iclight-rmbg") / "model",
        variants=(Variant.FC, Variant.FBC),
        rmbg=True,
    )


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the module (identity tests: thread count changes rounding)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
