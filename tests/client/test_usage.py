"""`Relight.usage` / `usage_csv` and `Admin.usage` against the live stack: the report the tenant
sees is the one the platform sees, and its credits are what the balance moved by."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from relight_client import Relight
from relight_client.admin import Admin

from tests.client.conftest import Account, fast
from tests.helpers import png_bytes

pytestmark = pytest.mark.slow


def test_usage_through_the_client_matches_the_admin_view_and_the_balance(
    client: Relight, admin: Admin, account: Account
) -> None:
    client.run(png_bytes(), "cat", timeout=120, **fast(number_of_images=2))

    report = client.usage(group_by="day")
    today = datetime.now(UTC).date().isoformat()
    assert [row.period for row in report.data] == [today]
    assert report.totals.requests == 1
    assert report.totals.images == 2
    assert report.totals.credits_net == 1000 - client.account().credits
    assert report.from_ < report.to

    assert admin.usage(account.name, group_by="day").totals == report.totals
    by_key = client.usage(today, today, group_by="key")
    assert [row.period for row in by_key.data] == [account.key.split("_")[1]]

    rows = list(csv.DictReader(io.StringIO(client.usage_csv(group_by="backend"))))
    assert [row["period"] for row in rows] == ["local"]
    assert int(rows[0]["credits_net"]) == report.totals.credits_net
