"""Tenant isolation: another tenant's ids are as unknown as made-up ones, on every route;
fields a client must not set are refused."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.conftest import MakeTenant
from tests.helpers import png_bytes


async def test_tenant_b_gets_404_on_every_id_of_tenant_a(
    client: httpx.AsyncClient, make_tenant: MakeTenant
) -> None:
    a = await make_tenant("tenant-a")
    b = await make_tenant("tenant-b")
    finished = await client.post(
        "/v2/ic-light",
        headers=a.headers,
        json={
            "prompt": "cat",
            "subject_image": "data:image/png;base64,"
            + base64.b64encode(png_bytes((64, 80), (128, 128, 128))).decode(),
            "webhook_url": "https://example.com/hook",
        },
    )
    assert finished.status_code == 202, finished.text
    request_id = finished.json()["request_id"]

    routes = [
        ("GET", f"/v2/requests/{request_id}"),
        ("GET", f"/v2/requests/{request_id}/status"),
        ("GET", f"/v2/requests/{request_id}/outputs/0"),
        ("GET", f"/v2/requests/{request_id}/webhooks"),
        ("POST", f"/v2/requests/{request_id}/webhooks/redeliver"),
        ("POST", f"/v2/requests/{request_id}/cancel"),
    ]
    for method, path in routes:
        response = await client.request(method, path, headers=b.headers)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["code"] == "not_found"
    listing = await client.get("/v2/requests", headers=b.headers)
    assert listing.json()["data"] == []

    # B's attempts changed nothing of A's: it is still A's, still queued, still cancelable.
    own = await client.get(f"/v2/requests/{request_id}", headers=a.headers)
    assert own.json()["status"] == "QUEUED"


@pytest.mark.parametrize(
    "field",
    [
        {"tenant_id": "00000000-0000-0000-0000-000000000000"},
        {"credits": 0},
        {"credits_reserved": 0},
        {"status": "COMPLETED"},
        {"request_id": "00000000-0000-0000-0000-000000000000"},
        {"attempts": 5},
    ],
)
async def test_mass_assignment_is_refused(
    client: httpx.AsyncClient, make_tenant: MakeTenant, field: dict[str, object]
) -> None:
    tenant = await make_tenant()
    response = await client.post(
        "/v2/ic-light",
        headers=tenant.headers,
        json={"prompt": "cat", "subject_image": "https://example.com/cat.png", **field},
    )
    assert response.status_code == 422
    assert response.json()["field"] == next(iter(field))
