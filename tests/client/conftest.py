"""A live `relight-api` + `relight-worker` (local backend) for the Python client's tests, with
the admin API open, and tenants made through the client's own admin API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from relight_client import Relight
from relight_client.admin import Admin

from relight.core.config import Settings
from scripts.stack import local_stack
from tests.e2e.test_live_stack import _environment
from tests.fakes.flaky_proxy import FlakyProxy
from tests.helpers import FAST

ADMIN_TOKEN = "client-tests-admin-token-0123456789"


@pytest.fixture(scope="package")
def base_url(
    settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    env = _environment(
        settings,
        tmp_path_factory.mktemp("client-storage"),
        RELIGHT_QUEUE_NAME=settings.queue_name + ":client",
        RELIGHT_ADMIN_TOKEN=ADMIN_TOKEN,
        # A failed attempt waits long enough for the cancel tests to catch the job queued.
        RELIGHT_RETRY_BACKOFF_S="30",
    )
    with local_stack(env, tmp_path_factory.mktemp("client-logs")) as client:
        yield str(client.base_url).rstrip("/")


@pytest.fixture
def admin(base_url: str) -> Iterator[Admin]:
    with Admin(base_url, ADMIN_TOKEN) as admin:
        yield admin


@dataclass(frozen=True)
class Account:
    name: str
    key: str


@pytest.fixture
def account(admin: Admin) -> Account:
    """A fresh tenant with 1000 credits and one key, made through the admin API."""
    name = f"client-{uuid.uuid4().hex[:10]}"
    admin.create_tenant(name, credits=1000)
    return Account(name, admin.create_key(name, "tests").key)


@pytest.fixture
def client(base_url: str, account: Account) -> Iterator[Relight]:
    with Relight(base_url, account.key) as client:
        yield client


@pytest.fixture
def proxy(base_url: str) -> Iterator[FlakyProxy]:
    with FlakyProxy(base_url) as proxy:
        yield proxy


def fast(**overrides: Any) -> dict[str, Any]:
    """Parameters the classic engine renders in a blink (one 256×256 PNG)."""
    return {**FAST, "seed": 7, **overrides}
