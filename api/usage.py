"""The query of a usage report (`GET /v2/usage`, and per tenant in the admin API) and its two
renderings: JSON (`UsageReport`) or CSV (`?format=csv`, or the `.csv` operation)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Response
from sqlalchemy.ext.asyncio import AsyncSession

from api.errors import error_responses
from relight.usage.schemas import GroupBy, UsageReport
from relight.usage.service import MAX_WINDOW_DAYS, usage_csv, usage_report, usage_window

USAGE_DESCRIPTION = (
    "Requests, images, credits and GPU time in a window, by UTC `day`, `backend` or API `key`. "
    "Credits are the ledger's `reserve`, `charge` and `refund` entries written in the window "
    "(the totals equal the ledger exactly); requests, images and `gpu_seconds` (the time of "
    "every call to a GPU node, failed attempts included) count the requests accepted in it. "
    "`from` and `to` are ISO dates (UTC days; `to` includes its day) or datetimes (`to` "
    f"exclusive); by default the last 30 days; at most {MAX_WINDOW_DAYS} days. "
    "`format=csv` answers the periods as `text/csv` with a header row (the `.csv` operation "
    "answers only that, for clients generated from this document)."
)
USAGE_CSV_DESCRIPTION = (
    "The usage report's periods as `text/csv` with a header row: the same as `format=csv`, as an "
    "operation of its own so that a generated client reads its answer as text."
)
USAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/csv": {"schema": {"type": "string"}}},
        "description": "the report (JSON), or its periods as CSV with `format=csv`",
    },
    **error_responses(422),
}
USAGE_CSV_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/csv": {"schema": {"type": "string"}}},
        "description": "the report's periods, a header row first",
    },
    **error_responses(422),
}


@dataclass(frozen=True)
class UsageQuery:
    start: str | None
    end: str | None
    group_by: GroupBy
    format: Literal["json", "csv"]


async def usage_window_query(
    start: Annotated[
        str | None,
        Query(alias="from", max_length=40, description="window start: ISO date or datetime"),
    ] = None,
    end: Annotated[
        str | None,
        Query(alias="to", max_length=40, description="window end: ISO date or datetime"),
    ] = None,
    group_by: Annotated[GroupBy, Query(description="one entry per UTC day, backend or key")] = (
        GroupBy.DAY
    ),
) -> UsageQuery:
    return UsageQuery(start=start, end=end, group_by=group_by, format="json")


UsageWindowDep = Annotated[UsageQuery, Depends(usage_window_query)]


async def usage_query(
    window: UsageWindowDep,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
) -> UsageQuery:
    return replace(window, format=format)


async def usage_csv_query(window: UsageWindowDep) -> UsageQuery:
    return replace(window, format="csv")


UsageQueryDep = Annotated[UsageQuery, Depends(usage_query)]
UsageCsvQueryDep = Annotated[UsageQuery, Depends(usage_csv_query)]


async def usage_answer(
    session: AsyncSession, tenant_id: uuid.UUID, query: UsageQuery, filename: str
) -> UsageReport | Response:
    """The tenant's usage report as the query asks for it."""
    if query.format == "csv":
        return await usage_csv_answer(session, tenant_id, query, filename)
    start, end = usage_window(query.start, query.end)
    return await usage_report(session, tenant_id, start, end, query.group_by)


async def usage_csv_answer(
    session: AsyncSession, tenant_id: uuid.UUID, query: UsageQuery, filename: str
) -> Response:
    """The tenant's usage report's periods as a CSV download."""
    start, end = usage_window(query.start, query.end)
    report = await usage_report(session, tenant_id, start, end, query.group_by)
    return Response(
        usage_csv(report),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'},
    )
