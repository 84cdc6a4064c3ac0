"""`Relight` (blocking) against a live api + worker: every method, as a user calls it."""

from __future__ import annotations

import base64
import hashlib
import itertools
import time
from pathlib import Path

import pytest
from PIL import Image
from relight_client import (
    AuthenticationError,
    ConflictError,
    InsufficientCreditsError,
    NotFoundError,
    PermissionDeniedError,
    Record,
    Relight,
    RequestFailedError,
    Status,
    UnprocessableEntityError,
    WaitTimeoutError,
)
from relight_client.admin import Admin

from tests.client.conftest import Account, fast
from tests.fakes.image_server import ImageServer
from tests.helpers import png_bytes

pytestmark = pytest.mark.slow


def test_relight_a_file_wait_and_download_the_image(client: Relight, tmp_path: Path) -> None:
    subject = tmp_path / "subject.png"
    subject.write_bytes(png_bytes((96, 120)))

    request = client.relight(subject, "cat, soft window light", **fast())
    record = request.wait(timeout=60)

    assert record.status is Status.COMPLETED
    assert record.request_id == request.id
    assert record.params.seed == 7
    (output,) = record.outputs
    assert (output.width, output.height, output.content_type) == (256, 256, "image/png")
    (path,) = request.download(tmp_path / "out")
    assert path.name == f"{request.id}-0.png"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == output.sha256
    with Image.open(path) as image:
        assert image.size == (256, 256)


def test_bytes_with_prefer_wait_come_back_finished(client: Relight) -> None:
    request = client.relight(png_bytes(), "portrait", wait=30, **fast())

    # The submit itself answered the finished record (`Prefer: wait`): no polling needed.
    assert request.record is not None
    assert request.record.status is Status.COMPLETED
    assert request.wait() is request.record


def test_run_takes_a_url_or_a_data_url(client: Relight, image_server: ImageServer) -> None:
    from_url = client.run(image_server.url("/astronaut.png"), "astronaut, neon", **fast())
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    from_data_url = client.run(data_url, "cat", timeout=60, **fast())

    assert from_url.status is Status.COMPLETED
    assert from_url.subject_image == image_server.url("/astronaut.png")
    assert from_data_url.status is Status.COMPLETED
    assert from_data_url.subject_image is None


def test_a_raw_base64_string_longer_than_a_file_name_is_sent_as_data(client: Relight) -> None:
    # Longer than any file name (255 bytes): the client once crashed checking it was a file.
    raw = base64.b64encode(png_bytes((96, 120))).decode()
    assert len(raw) > 255

    record = client.run(raw, "cat, soft light", timeout=60, **fast())

    assert record.status is Status.COMPLETED
    (output,) = record.outputs
    assert (output.width, output.height) == (256, 256)


def test_a_missing_file_raises_before_anything_is_sent(client: Relight, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        client.relight(tmp_path / "nowhere.png", "cat")
    with pytest.raises(FileNotFoundError):
        client.relight("typo/astronaut.png", "cat")

    assert list(client.requests.list()) == []


def test_a_background_image_is_sent_and_refused_without_an_fbc_node(client: Relight) -> None:
    with pytest.raises(PermissionDeniedError) as raised:
        client.relight(png_bytes(), "cat", background_image=png_bytes((64, 64)), **fast())

    # The server read it as a background request: only a GPU node with IC-Light fbc serves one.
    assert (raised.value.status_code, raised.value.code) == (403, "background_not_served")


def test_stream_yields_each_change_until_the_end(client: Relight) -> None:
    request = client.relight(png_bytes(), "cat", **fast(steps=20))

    statuses = list(request.stream(timeout=60, poll_interval=0.05))

    assert statuses[-1].status is Status.COMPLETED
    assert all(status.request_id == request.id for status in statuses)
    changes = [(s.status, s.queue_position, s.progress) for s in statuses]
    assert all(before != after for before, after in itertools.pairwise(changes))
    assert {s.status for s in statuses} <= {Status.QUEUED, Status.PROCESSING, Status.COMPLETED}


def test_status_get_and_a_handle_by_id(client: Relight) -> None:
    request = client.relight(png_bytes(), "cat", wait=30, **fast())

    assert client.requests.status(request.id).status is Status.COMPLETED
    assert client.requests.get(request.id).outputs[0].seed == 7
    again = client.handle(request.id)
    assert again.status().status is Status.COMPLETED
    assert again.get().request_id == request.id
    assert again.wait(timeout=5).status is Status.COMPLETED


def test_list_iterates_over_every_page_newest_first(client: Relight) -> None:
    ids = [client.relight(png_bytes(), f"cat {n}", wait=30, **fast()).id for n in range(3)]

    listed = [record.request_id for record in client.requests.list(page_size=2)]
    completed = list(client.requests.list(status=Status.COMPLETED, page_size=1))
    failed = list(client.requests.list(status="FAILED"))

    assert listed == ids[::-1]
    assert [record.request_id for record in completed] == ids[::-1]
    assert failed == []


def test_cancel_a_queued_request_refunds_it(
    client: Relight, admin: Admin, account: Account, image_server: ImageServer
) -> None:
    # A broken subject URL fails transiently, so the request waits 30 s queued for its retry.
    request = client.relight(image_server.url("/broken"), "cat", **fast())
    record = cancel_when_queued(client, request.id)

    assert record.status is Status.CANCELED
    assert record.error_code == "canceled"
    assert request.wait(timeout=5).status is Status.CANCELED
    with pytest.raises(RequestFailedError) as raised:
        request.download(".")
    assert raised.value.status == "CANCELED"
    assert client.account().credits == 1000
    kinds = [entry.kind for entry in admin.ledger(account.name)]
    assert kinds == ["refund", "reserve", "grant"]


def cancel_when_queued(client: Relight, request_id: str) -> Record:
    """Cancel; while an attempt runs (409) try again, until the request waits to retry."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return client.handle(request_id).cancel()
        except ConflictError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_wait_gives_up_after_its_timeout(client: Relight, image_server: ImageServer) -> None:
    request = client.relight(image_server.url("/broken"), "cat", **fast())

    with pytest.raises(WaitTimeoutError) as raised:
        request.wait(timeout=0.5, poll_interval=0.1)

    assert raised.value.request_id == request.id
    cancel_when_queued(client, request.id)


def test_account_shows_balance_limits_and_usage(client: Relight, account: Account) -> None:
    record = client.run(png_bytes(), "cat", **fast())

    seen = client.account()

    assert seen.name == account.name
    assert seen.credits == 1000 - record.credits.charged
    assert seen.limits.burst > 0
    assert seen.usage.requests_30d == {"COMPLETED": 1}
    assert seen.usage.credits_charged_30d == record.credits.charged


def test_errors_carry_status_code_and_request_id(
    base_url: str, client: Relight, admin: Admin
) -> None:
    with Relight(base_url, "rl_nope_nope") as stranger, pytest.raises(AuthenticationError) as bad:
        stranger.account()
    with pytest.raises(NotFoundError) as missing:
        client.requests.get("0190a3c4-0000-7000-8000-000000000000")
    with pytest.raises(UnprocessableEntityError) as invalid:
        client.relight(png_bytes(), "cat", **fast(steps=0))
    poor = f"poor-{id(admin)}"
    admin.create_tenant(poor, credits=0)
    with (
        Relight(base_url, admin.create_key(poor).key) as broke,
        pytest.raises(InsufficientCreditsError) as no_credits,
    ):
        broke.relight(png_bytes(), "cat", **fast())

    assert (bad.value.status_code, bad.value.code) == (401, "unauthorized")
    assert missing.value.status_code == 404
    assert missing.value.code == "not_found"
    assert (invalid.value.status_code, invalid.value.body["field"]) == (422, "steps")
    assert no_credits.value.status_code == 406
    assert no_credits.value.code == "insufficient_credits"
    for error in (bad.value, missing.value, invalid.value, no_credits.value):
        assert error.request_id
        assert isinstance(error.message, str)


def test_submit_answers_the_acceptance_and_the_charge_matches_it(client: Relight) -> None:
    request = client.relight(png_bytes(), "cat", **fast())

    assert request.record is None
    assert request.accepted is not None
    assert request.accepted.status is Status.QUEUED
    assert request.accepted.request_id == request.id
    record = request.wait(timeout=60)
    assert record.credits.charged == request.accepted.credits_reserved
