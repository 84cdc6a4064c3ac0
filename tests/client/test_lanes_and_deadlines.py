"""relight-client sends a request's lane (`priority=`) and deadline (`cancel_after=`), and its
admin API sets a tenant's lanes; against the live api and worker."""

from __future__ import annotations

from datetime import timedelta

import pytest
from relight_client import Relight
from relight_client._operations import cancel_after_header
from relight_client.admin import Admin
from relight_client.errors import PermissionDeniedError

from tests.client.conftest import Account, fast
from tests.helpers import png_bytes


@pytest.mark.parametrize(
    ("value", "header"),
    [(90, "90s"), (1.5, "1500ms"), (timedelta(minutes=5), "300s"), ("1m30s", "1m30s")],
)
def test_cancel_after_becomes_the_headers_text(value: float | timedelta | str, header: str) -> None:
    assert cancel_after_header(value) == header


def test_relight_sends_the_lane_and_the_deadline(client: Relight) -> None:
    request = client.relight(png_bytes(), "portrait", priority="low", cancel_after=90, **fast())
    record = request.wait(timeout=60)

    assert record.priority == "low"
    assert record.deadline_at is not None
    assert record.deadline_at - record.created_at == timedelta(seconds=90)


def test_the_high_lane_is_refused_until_the_admin_allows_it(
    client: Relight, admin: Admin, account: Account
) -> None:
    with pytest.raises(PermissionDeniedError) as refused:
        client.relight(png_bytes(), "portrait", priority="high", **fast())
    assert refused.value.code == "priority_not_allowed"

    tenant = admin.set_lanes(account.name, ["high", "normal", "low"])

    assert tenant.allowed_lanes == ["high", "normal", "low"]
    record = client.relight(png_bytes(), "portrait", priority="high", **fast()).wait(timeout=60)
    assert record.priority == "high"
