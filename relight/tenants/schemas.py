"""Views and bodies for tenants, their limits and keys (admin API and account)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from relight.core.client_model import ClientModel
from relight.core.models import ApiKey, Tenant
from relight.tenants.names import confusable_name_problem
from relight.tenants.scopes import SCOPES_DESCRIPTION

TENANT_NAME_MAX_LENGTH = 200
TENANT_NAME_CHARACTERS = re.compile(r"[\w.@-]+")
# A tenant's dispatch weight: jobs it starts per turn of fair dispatch (the tenant table's
# check constraint says the same).
WEIGHT_MIN, WEIGHT_MAX = 1, 100
WEIGHT_DESCRIPTION = (
    f"jobs this tenant starts per turn of fair dispatch while others wait ({WEIGHT_MIN} to "
    f"{WEIGHT_MAX}; 1 = an equal share)"
)
Weight = Annotated[int, Field(ge=WEIGHT_MIN, le=WEIGHT_MAX, description=WEIGHT_DESCRIPTION)]


def tenant_name_problem(name: str) -> str | None:
    """What is wrong with `name` as a tenant name, or None. The one rule, for the admin API
    and `relight-admin` alike: `{tenant}` in routes and commands takes a name or an id, so a
    name must never read as an id (a UUID in any spelling `uuid.UUID` accepts), nor as a path.
    """
    if not 1 <= len(name) <= TENANT_NAME_MAX_LENGTH:
        return f"must be 1 to {TENANT_NAME_MAX_LENGTH} characters long, not {len(name)}"
    if TENANT_NAME_CHARACTERS.fullmatch(name) is None:
        return "may contain only letters, digits and . _ @ -"
    if set(name) == {"."}:
        return "must not be only dots (it reads as a path)"
    confusable = confusable_name_problem(name)
    if confusable is not None:
        return confusable
    try:
        uuid.UUID(name)
    except ValueError:
        return None
    return "must not read as a tenant id (a UUID): routes and commands take a name or an id"


def _check_tenant_name(name: str) -> str:
    problem = tenant_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


TenantName = Annotated[
    str,
    AfterValidator(_check_tenant_name),
    Field(
        description="letters, digits and . _ @ - (1 to 200); never a UUID, never only dots",
        json_schema_extra={
            "pattern": f"^{TENANT_NAME_CHARACTERS.pattern}$",
            "minLength": 1,
            "maxLength": TENANT_NAME_MAX_LENGTH,
        },
    ),
]


class LimitsView(BaseModel):
    requests_per_minute: int = Field(description="sustained submit rate")
    burst: int = Field(description="submits allowed at once")
    max_in_flight: int = Field(description="queued plus running requests at most")


class LimitsUpdate(ClientModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_minute: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    burst: Annotated[int | None, Field(ge=1, le=100_000)] = None
    max_in_flight: Annotated[int | None, Field(ge=1, le=100_000)] = None


class TenantView(BaseModel):
    id: uuid.UUID
    name: str
    status: str
    credit_balance: int
    active_jobs: int
    limits: LimitsView
    allowed_backends: list[str]
    allowed_lanes: list[str] = Field(
        default_factory=lambda: ["normal", "low"],
        description="the priority lanes its requests may use (high, normal, low)",
    )
    webhook_url: str | None
    weight: int = Field(description=WEIGHT_DESCRIPTION)
    created_at: datetime

    @classmethod
    def of(cls, tenant: Tenant) -> TenantView:
        return cls(
            id=tenant.id,
            name=tenant.name,
            status=tenant.status,
            credit_balance=tenant.credit_balance,
            active_jobs=tenant.active_jobs,
            limits=LimitsView(
                requests_per_minute=tenant.requests_per_minute,
                burst=tenant.burst,
                max_in_flight=tenant.max_in_flight,
            ),
            allowed_backends=list(tenant.allowed_backends),
            allowed_lanes=list(tenant.allowed_lanes),
            webhook_url=tenant.webhook_url,
            weight=tenant.weight,
            created_at=tenant.created_at,
        )


class BackendsUpdate(ClientModel):
    model_config = ConfigDict(extra="forbid")

    backends: list[str] = Field(description="any of gpu, segmind, local")


class LanesUpdate(ClientModel):
    model_config = ConfigDict(extra="forbid")

    lanes: list[str] = Field(
        description="any of high, normal, low (new tenants: normal and low)",
        examples=[["high", "normal", "low"]],
    )


class WeightUpdate(ClientModel):
    model_config = ConfigDict(extra="forbid")

    weight: Weight


class WebhookUrlUpdate(ClientModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str | None, Field(max_length=2048, description="null: no default")]


class TenantCreate(ClientModel):
    model_config = ConfigDict(extra="forbid")

    name: TenantName
    credits: Annotated[int, Field(ge=0, le=10**12)] = 0
    limits: LimitsUpdate | None = None
    weight: Weight = 1


LABEL_DESCRIPTION = "what the key is for (yours to choose; shown in lists)"
EXPIRES_IN_MAX_S = 10 * 365 * 86400


class KeyView(BaseModel):
    """One of the tenant's API keys, as `GET /v2/keys` lists it: never the secret."""

    id: uuid.UUID
    prefix: str = Field(description="the key's public part: `rl_<prefix>_…`")
    label: str | None = Field(description=LABEL_DESCRIPTION)
    scopes: list[str] = Field(description="what the key may do")
    created_at: datetime
    last_used_at: datetime | None = Field(
        description="when the key was last used, to about a minute (or the auth cache's TTL)"
    )
    expires_at: datetime | None = Field(description="null: the key never expires")
    revoked_at: datetime | None

    @classmethod
    def of(cls, api_key: ApiKey) -> KeyView:
        return cls(
            id=api_key.id,
            prefix=api_key.prefix,
            label=api_key.name,
            scopes=list(api_key.scopes),
            created_at=api_key.created_at,
            last_used_at=api_key.last_used_at,
            expires_at=api_key.expires_at,
            revoked_at=api_key.revoked_at,
        )


class KeyList(BaseModel):
    data: list[KeyView]


class NewKeyView(KeyView):
    key: str = Field(description="the key itself: shown once, never stored")


class NewKeyRequest(ClientModel):
    """`POST /v2/keys` (and, with `name`, the admin API's key creation)."""

    model_config = ConfigDict(extra="forbid")

    label: Annotated[str | None, Field(max_length=200, description=LABEL_DESCRIPTION)] = None
    scopes: list[str] | None = Field(default=None, description=SCOPES_DESCRIPTION)
    expires_at: datetime | None = Field(
        default=None, description="when the key stops working (ISO 8601, with a time zone)"
    )
    expires_in: Annotated[
        int | None,
        Field(ge=60, le=EXPIRES_IN_MAX_S, description="or: seconds from now until it stops"),
    ] = None


class KeyUpdate(ClientModel):
    """`PATCH /v2/keys/{key_id}` (and the admin API's): only the fields given change; at least
    one is needed. `expires_at: null` removes the expiry; `label: null` the label."""

    model_config = ConfigDict(extra="forbid")

    label: Annotated[str | None, Field(max_length=200, description=LABEL_DESCRIPTION)] = None
    scopes: list[str] | None = Field(
        default=None, description="the key's scopes from now on, replacing its current ones"
    )
    expires_at: datetime | None = Field(
        default=None,
        description="when the key stops working (ISO 8601, with a time zone); null: never",
    )
    expires_in: Annotated[
        int | None,
        Field(ge=60, le=EXPIRES_IN_MAX_S, description="or: seconds from now until it stops"),
    ] = None


class ApiKeyView(KeyView):
    """A key as the admin API shows it: `KeyView` with its tenant, and `name` (the label)."""

    tenant_id: uuid.UUID
    name: str | None = Field(description="the label (its name before labels)")

    @classmethod
    def of(cls, api_key: ApiKey) -> ApiKeyView:
        return cls(
            **KeyView.of(api_key).model_dump(), tenant_id=api_key.tenant_id, name=api_key.name
        )


class KeyCreate(NewKeyRequest):
    name: Annotated[str | None, Field(max_length=200, description="the label, by its old name")] = (
        None
    )


class CreatedKeyView(ApiKeyView):
    key: str = Field(description="the key itself: shown once, never stored")


class UsageView(BaseModel):
    active_jobs: int = Field(description="requests queued or running now")
    requests_30d: dict[str, int] = Field(description="requests of the last 30 days by status")
    credits_charged_30d: int


class AccountView(BaseModel):
    tenant_id: uuid.UUID
    name: str
    status: str
    credits: int
    limits: LimitsView
    usage: UsageView
