"""A client that hangs up halfway through its upload: nothing is charged, nothing is stored,
and the API does not log it as an error of its own."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Message

from tests.conftest import TenantKey
from tests.helpers import balance_of


async def test_a_disconnect_mid_upload_charges_nothing_and_is_not_an_error(
    app: FastAPI,
    tenant: TenantKey,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = await balance_of(engine, tenant.tenant_id)
    chunks: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"prompt": "sunset", "subject_ima', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    api_key = tenant.headers["x-api-key"]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v2/ic-light",
        "raw_path": b"/v2/ic-light",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", b"100000"),
            (b"x-api-key", api_key.encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
        "extensions": {},
        "request_id": str(uuid.uuid4()),
    }
    with caplog.at_level(logging.INFO):
        await app(scope, receive, send)

    [start] = [message for message in sent if message["type"] == "http.response.start"]
    assert start["status"] == 400
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert await balance_of(engine, tenant.tenant_id) == before
    async with engine.connect() as connection:
        jobs = await connection.scalar(
            text("SELECT count(*) FROM job WHERE tenant_id = :tenant"),
            {"tenant": tenant.tenant_id},
        )
    assert jobs == 0
