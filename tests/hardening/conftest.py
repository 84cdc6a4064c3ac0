"""The operators' page fixtures, shared with the hardening tests."""

from tests.ui.conftest import ui_app, ui_client, ui_settings

__all__ = ["ui_app", "ui_client", "ui_settings"]
