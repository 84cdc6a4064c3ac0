"""Shared by the engine and node tests: one tiny IC-Light model on disk per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

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
