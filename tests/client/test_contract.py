"""The client's models against the live server's `/openapi.json`: a field the server adds,
drops or makes required shows up here, not in a user's traceback."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from relight_client import models

pytestmark = pytest.mark.slow

# Each client model and the server schema it mirrors.
MIRRORS: dict[type[BaseModel], str] = {
    models.Record: "RequestView",
    models.RequestStatus: "StatusView",
    models.Output: "OutputView",
    models.Credits: "CreditsView",
    models.BackendInfo: "BackendView",
    models.BackendAttempt: "BackendAttemptView",
    models.BackendCall: "BackendCallView",
    models.RequestParams: "RequestParams",
    models.Accepted: "SubmitAccepted",
    models.Account: "AccountView",
    models.Limits: "LimitsView",
    models.Usage: "UsageView",
    models.WebhookSecret: "WebhookSecretView",
    models.WebhookDelivery: "DeliveryView",
    models.WebhookAttempt: "AttemptView",
    models.Tenant: "TenantView",
    models.Key: "KeyView",
    models.NewKey: "NewKeyView",
    models.ApiKey: "ApiKeyView",
    models.CreatedApiKey: "CreatedKeyView",
    models.LedgerEntry: "CreditEntryView",
    models.BatchAccepted: "BatchAccepted",
    models.BatchItem: "BatchItemView",
    models.Batch: "BatchView",
    models.BatchSummary: "BatchSummary",
    models.UsageFigures: "UsageFigures",
    models.UsagePeriod: "UsagePeriod",
    models.UsageReport: "UsageReport",
}


@pytest.fixture(scope="module")
def schemas(base_url: str) -> dict[str, Any]:
    openapi = httpx.get(f"{base_url}/openapi.json", timeout=10).json()
    found: dict[str, Any] = openapi["components"]["schemas"]
    return found


@pytest.mark.parametrize(("model", "schema_name"), MIRRORS.items(), ids=MIRRORS.values())
def test_a_model_has_the_servers_fields(
    model: type[BaseModel], schema_name: str, schemas: dict[str, Any]
) -> None:
    schema = schemas[schema_name]

    # By the name on the wire (`UsageReport.from_` is `from`).
    wire = {name: field.alias or name for name, field in model.model_fields.items()}
    assert set(wire.values()) == set(schema["properties"])
    # What the server always sends, the client may require; nothing more.
    required_by_client = {
        wire[name] for name, field in model.model_fields.items() if field.is_required()
    }
    assert required_by_client <= set(schema.get("required", []))


def test_the_status_values_match(schemas: dict[str, Any]) -> None:
    assert [status.value for status in models.Status] == schemas["PublicStatus"]["enum"]
