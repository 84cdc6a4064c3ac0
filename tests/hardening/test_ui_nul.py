"""The operators' page (issue 28, break 1): a NUL or a lone surrogate in a query, path or
form parameter is a 400 page naming the parameter, never a 500, and nothing moves."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import MakeTenant
from tests.helpers import balance_of
from tests.ui.conftest import sign_in


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/admin/ui/requests?tenant=%00", "tenant"),
        ("/admin/ui/requests?status=a%00b", "status"),
        ("/admin/ui/requests?backend=%ED%A0%80%00", "backend"),
        ("/admin/ui/tenants/al%00pha", "name"),
        ("/admin/ui/tenants/alpha?done=%00", "done"),
    ],
)
async def test_a_nul_in_a_view_parameter_is_a_400_naming_it(
    ui_client: httpx.AsyncClient, make_tenant: MakeTenant, path: str, parameter: str
) -> None:
    await make_tenant("alpha")
    await sign_in(ui_client)

    response = await ui_client.get(path)

    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert f"{parameter}: must not contain U+0000" in response.text


@pytest.mark.parametrize(
    ("path", "form", "parameter"),
    [
        ("/admin/ui/tenants/al%00pha/credits", {"amount": "5", "reason": "r"}, "name"),
        ("/admin/ui/tenants/alpha/cred%00its", {"amount": "5", "reason": "r"}, "action"),
        ("/admin/ui/tenants/alpha/credits", {"amount": "5", "reason": "r\x00"}, "reason"),
        ("/admin/ui/tenants/alpha/credits", {"amount": "5\x00", "reason": "r"}, "amount"),
        ("/admin/ui/tenants/alpha/credits", {"amount": "5", "reason": "r", "kind": "\x00"}, "kind"),
        ("/admin/ui/tenants/al%00pha/suspend", {}, "name"),
    ],
)
async def test_a_nul_in_an_action_with_a_valid_csrf_token_is_a_400_and_moves_nothing(
    ui_client: httpx.AsyncClient,
    make_tenant: MakeTenant,
    engine: AsyncEngine,
    path: str,
    form: dict[str, str],
    parameter: str,
) -> None:
    alpha = await make_tenant("alpha", credits=100)
    csrf = await sign_in(ui_client)

    response = await ui_client.post(path, data={"csrf_token": csrf, **form})

    assert response.status_code == 400, response.text
    assert f"{parameter}: must not contain U+0000" in response.text
    assert await balance_of(engine, alpha.tenant_id) == 100
    # The same action without the NUL still works.
    page = await ui_client.get("/admin/ui/tenants/alpha")
    assert page.status_code == 200
