"""The operators' tenant page shows the tenant's usage of the last 30 days, by UTC day, whose
credit figures are the ledger's."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import httpx

from tests.conftest import MakeTenant, RunWorker
from tests.helpers import fast_body, submit
from tests.ui.conftest import sign_in


def usage_rows(page: str) -> list[list[str]]:
    table = page.split('id="usage"', 1)[1].split("</table>", 1)[0]
    body = table.split("<tbody>", 1)[1]
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    ]


async def test_the_tenant_page_shows_usage_by_day_with_a_total(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant, run_worker: RunWorker
) -> None:
    tenant = await make_tenant("usage-page", credits=500)
    await submit(ui_client, tenant, fast_body(backend="local", number_of_images=2))
    await run_worker()
    await sign_in(ui_client)

    page = await ui_client.get(f"/admin/ui/tenants/{tenant.name}")
    assert page.status_code == 200, page.text
    today, total = usage_rows(page.text)
    balance_moved = str(500 - int(re.findall(r'id="balance">(\d+)<', page.text)[0]))
    assert today[0] == datetime.now(UTC).date().isoformat()
    assert today[1:3] == ["1", "1"]  # requests, completed
    assert today[5] == "2"  # images
    assert today[8] == balance_moved  # net credits: what the balance moved by
    assert total[0] == "total"
    assert total[1:9] == today[1:9]
