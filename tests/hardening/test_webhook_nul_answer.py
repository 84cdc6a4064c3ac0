"""A receiver that answers 2xx with a NUL (or bytes that are not UTF-8) in its body (issue 28,
break 2): the attempt is stored (the excerpt made storable) and the delivery ends delivered
after one attempt, instead of staying pending and being sent again and again."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relight.webhooks.delivery import RESPONSE_EXCERPT_BYTES
from tests.conftest import RunWorker, TenantKey
from tests.fakes.webhook_receiver import Reply, WebhookReceiver
from tests.helpers import fast_body, submit
from tests.webhooks.test_delivery import HOOK, only_delivery


@pytest.mark.parametrize(
    "answer",
    [b"ok\x00", b"\x00" * 4000, b"ok \xff\xfe \xed\xa0\x80 \x00 end"],
    ids=["nul", "only-nul", "not-utf8"],
)
async def test_a_2xx_with_a_nul_in_its_body_ends_the_delivery(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    run_worker: RunWorker,
    receiver: WebhookReceiver,
    engine: AsyncEngine,
    answer: bytes,
) -> None:
    receiver.script(HOOK, [Reply(200, body=answer)])
    request_id = await submit(client, tenant, fast_body(webhook_url=receiver.url(HOOK)))
    await run_worker()
    await run_worker()  # nothing is due again: the receiver gets one webhook

    assert len(receiver.received(HOOK)) == 1
    delivery = await only_delivery(client, tenant, request_id)
    assert delivery["status"] == "delivered", delivery
    assert delivery["attempts"] == 1
    assert delivery["next_attempt_at"] is None
    [attempt] = delivery["attempt_log"]
    assert attempt["status_code"] == 200
    async with engine.connect() as connection:
        excerpt = await connection.scalar(text("select response_excerpt from webhook_attempt"))
    assert "\x00" not in excerpt
    # What could be kept is: each unstorable character became U+FFFD.
    assert excerpt == answer[:RESPONSE_EXCERPT_BYTES].decode(errors="replace").replace(
        "\x00", "\ufffd"
    )
