"""The README documents every setting, and the two commands."""

from __future__ import annotations

from relight.config import Settings
from tests.conftest import ROOT


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        f"RELIGHT_{name.upper()}"
        for name in Settings.model_fields
        if f"`RELIGHT_{name.upper()}`" not in readme
    ]
    assert missing == []


def test_readme_gives_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme
    assert "make test" in readme
