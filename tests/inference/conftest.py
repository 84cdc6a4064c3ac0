"""Shared by the engine and node tests: one tiny IC-Light model on disk per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.tiny_model import write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("iclight") / "model")
