"""The README documents every setting (the service's and the GPU node's), and the two commands."""

from __future__ import annotations

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from inference.node.settings import NodeSettings
from relight.core.config import Settings
from tests.conftest import ROOT


def environment_names(settings_class: type[BaseSettings]) -> list[str]:
    """The variable each field is read from (its first alias when it has some)."""
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    names = []
    for name, info in settings_class.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.append(str(alias.choices[0]).upper())
        elif isinstance(alias, str):
            names.append(alias.upper())
        else:
            names.append(f"{prefix}{name}".upper())
    return names


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in environment_names(Settings) if f"`{name}`" not in readme]
    assert missing == []


def test_readme_documents_every_node_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    names = environment_names(NodeSettings)
    assert "RELIGHT_NODE_ENGINE" in names
    missing = [name for name in names if f"`{name}`" not in readme]
    assert missing == []


def test_readme_gives_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme
    assert "make test" in readme
