"""Migration 0017 (scoped, expiring keys): a key made before it keeps working as it did, with
the default scopes (everything but `keys:manage`, which no key could do before) and no expiry.
"""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from relight.tenants.scopes import DEFAULT_SCOPES
from tests.conftest import alembic_config
from tests.migrations.test_migrations import asyncpg_url, scratch, upgrade  # noqa: F401

pytestmark = pytest.mark.slow


async def test_a_key_made_before_scopes_gets_the_default_scopes_and_no_expiry(
    scratch: str,  # noqa: F811
) -> None:
    config = alembic_config(scratch)
    await upgrade(config, "0017-1")
    tenant_id, key_id = uuid.uuid4(), uuid.uuid4()
    connection = await asyncpg.connect(asyncpg_url(scratch))
    try:
        await connection.execute(
            "INSERT INTO tenant (id, name) VALUES ($1, 'old-tenant')", tenant_id
        )
        await connection.execute(
            "INSERT INTO api_key (id, tenant_id, prefix, secret_hash) VALUES ($1, $2, $3, $4)",
            key_id,
            tenant_id,
            "0123456789ab",
            "0" * 64,
        )
    finally:
        await connection.close()

    await upgrade(config, "0017")

    connection = await asyncpg.connect(asyncpg_url(scratch))
    try:
        row = await connection.fetchrow(
            "SELECT scopes, expires_at FROM api_key WHERE id = $1", key_id
        )
    finally:
        await connection.close()
    assert row is not None
    assert json.loads(row["scopes"]) == list(DEFAULT_SCOPES)
    assert row["expires_at"] is None
