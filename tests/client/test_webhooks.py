"""`relight_client.webhooks.verify` on real deliveries from the live stack, across a rotation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from relight_client import AsyncRelight, Status, WebhookVerificationError
from relight_client.webhooks import verify

from tests.client.conftest import Account, fast
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.helpers import png_bytes

pytestmark = pytest.mark.slow

OTHER_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo3ODkw"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


async def test_a_delivery_verifies_with_the_old_or_the_new_secret_after_a_rotation(
    base_url: str, account: Account, receiver: WebhookReceiver
) -> None:
    async with AsyncRelight(base_url, account.key) as client:
        old = (await client.webhook_secret()).secret
        rotated = await client.rotate_webhook_secret()
        new = rotated.secret
        request = await client.relight(
            png_bytes(), "cat", webhook_url=receiver.url("/hook"), **fast()
        )
        record = await request.wait(timeout=60)
    (delivery,) = await receiver.wait_for("/hook", 1)

    assert new != old
    assert rotated.previous_secret_expires_at is not None
    assert len(delivery.signatures) == 2  # one per secret still signing
    for secrets in ([old], [new], [OTHER_SECRET, new], (s for s in [new, old])):
        event = verify(delivery.body, delivery.headers, secrets)
        assert event.event == "completed"
        assert event.request_id == request.id
        assert event.status is Status.COMPLETED
        assert event.outputs[0].sha256 == record.outputs[0].sha256
    assert verify(delivery.body.decode(), delivery.headers, new).request_id == request.id

    with pytest.raises(WebhookVerificationError):
        verify(delivery.body, delivery.headers, [OTHER_SECRET])
    with pytest.raises(WebhookVerificationError):
        verify(delivery.body.replace(b"COMPLETED", b"FAILED"), delivery.headers, [old, new])
    stale = {
        **delivery.headers,
        "webhook-timestamp": str(int(delivery.headers["webhook-timestamp"]) - 3600),
    }
    with pytest.raises(WebhookVerificationError):
        verify(delivery.body, stale, [old, new])
