"""Fixtures the hardening tests share with the operators' page and webhook tests."""

from tests.ui.conftest import ui_app, ui_client, ui_settings
from tests.webhooks.conftest import receiver

__all__ = ["receiver", "ui_app", "ui_client", "ui_settings"]
