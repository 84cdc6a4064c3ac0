"""A client generated from `/openapi.json` by openapi-python-client, used as its users would:
no warnings from the generator, the key set once (either scheme), JSON and file submits, polling,
listing, cancel, an output download and the account; batches with a `Cancel-After` header and
lanes, usage as JSON and CSV, scoped keys and a 403 `insufficient_scope` as the error model."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.app import create_app
from relight.core.config import Settings
from relight.tenants.scopes import ALL_SCOPES
from scripts.stack import BIN
from tests.api.test_keys import key_for
from tests.conftest import RunWorker, TenantKey
from tests.helpers import FAST, SMALL_PNG_BASE64, png_bytes
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The client package, generated from the spec the app serves."""
    root = tmp_path_factory.mktemp("generated")
    spec = root / "openapi.json"
    spec.write_text(json.dumps(create_app(Settings(environment="test")).openapi()))
    package = f"relight_generated_{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(spec),
            "--meta",
            "none",
            "--output-path",
            str(root / package),
        ],
        # The generator formats its output with ruff, which it looks for on PATH.
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "warning" not in output.lower(), output
    assert "error" not in output.lower(), output
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(package)
    finally:
        sys.path.remove(str(root))


def module(generated: Any, name: str) -> Any:
    return importlib.import_module(f"{generated.__name__}.{name}")


def authenticated(generated: Any, app: FastAPI, tenant: TenantKey, *, bearer: bool) -> Any:
    """The generated AuthenticatedClient on the in-process app: `Authorization: Bearer` (its
    default) or Segmind's `x-api-key` header."""
    client_module = module(generated, "client")
    options: dict[str, Any] = {} if bearer else {"auth_header_name": "x-api-key", "prefix": ""}
    return client_module.AuthenticatedClient(
        base_url="http://testserver",
        token=tenant.key,
        raise_on_unexpected_status=True,
        httpx_args={"transport": httpx.ASGITransport(app=app)},
        **options,
    )


def test_the_spec_names_operations_and_declares_the_key(settings: Settings) -> None:
    spec = create_app(settings).openapi()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "Your Relight API key in Segmind's header",
    }
    assert schemes["Bearer"]["scheme"] == "bearer"
    submit = spec["paths"]["/v2/ic-light"]["post"]
    assert submit["operationId"] == "submit_relight"
    assert submit["security"] == [{"ApiKey": []}, {"Bearer": []}]
    assert all(parameter["name"] != "x-api-key" for parameter in submit["parameters"])
    content = submit["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/SubmitBody"}
    assert content["multipart/form-data"]["schema"] == {"$ref": "#/components/schemas/SubmitForm"}
    form = spec["components"]["schemas"]["SubmitForm"]
    assert form["properties"]["subject_image"]["format"] == "binary"
    assert spec["paths"]["/v2/requests/{request_id}"]["get"]["operationId"] == "get_request"
    download = spec["paths"]["/v2/requests/{request_id}/outputs/{index}"]["get"]
    assert download["responses"]["200"]["content"]["image/png"]["schema"]["format"] == "binary"
    assert {} in download["security"]  # a signed URL needs no key
    ids = [
        operation["operationId"] for item in spec["paths"].values() for operation in item.values()
    ]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("bearer", [True, False], ids=["bearer", "x-api-key"])
async def test_a_generated_client_works_end_to_end(
    generated: Any,
    app: FastAPI,
    tenant: TenantKey,
    run_worker: RunWorker,
    bearer: bool,
) -> None:
    models = module(generated, "models")
    types = module(generated, "types")
    submit_relight = module(generated, "api.relight.submit_relight")
    get_request_status = module(generated, "api.requests.get_request_status")
    get_request = module(generated, "api.requests.get_request")
    list_requests = module(generated, "api.requests.list_requests")
    cancel_request = module(generated, "api.requests.cancel_request")
    get_request_output = module(generated, "api.requests.get_request_output")
    get_account = module(generated, "api.account.get_account")
    get_user_credits = module(generated, "api.account.get_user_credits")

    async with authenticated(generated, app, tenant, bearer=bearer) as client:
        fast = {**FAST, "output_format": models.OutputFormat(FAST["output_format"])}
        # JSON, with the subject as base64.
        as_json = await submit_relight.asyncio(
            client=client,
            body=models.SubmitBody(
                prompt="cat, soft light", subject_image=SMALL_PNG_BASE64, seed=5, **fast
            ),
        )
        assert isinstance(as_json, models.SubmitAccepted)
        assert as_json.status is models.PublicStatus.QUEUED
        # Multipart, with the subject as a file.
        upload = types.File(
            payload=io.BytesIO(png_bytes((80, 96))), file_name="cat.png", mime_type="image/png"
        )
        as_file = await submit_relight.asyncio(
            client=client,
            body=models.SubmitForm(
                prompt="cat, neon light",
                subject_image=upload,
                light_source=models.LightSource.LEFT_LIGHT,
                **fast,
            ),
        )
        assert isinstance(as_file, models.SubmitAccepted)
        # One more, canceled while it waits.
        to_cancel = await submit_relight.asyncio(
            client=client,
            body=models.SubmitBody(prompt="cat", subject_image=SMALL_PNG_BASE64, **fast),
        )
        canceled = await cancel_request.asyncio(client=client, request_id=to_cancel.request_id)
        assert isinstance(canceled, models.RequestView)
        assert canceled.status is models.PublicStatus.CANCELED
        assert canceled.error_code == "canceled"

        await run_worker()

        status = await get_request_status.asyncio(client=client, request_id=as_json.request_id)
        assert isinstance(status, models.StatusView)
        assert status.status is models.PublicStatus.COMPLETED
        assert status.metrics["total_ms"] > 0

        record = await get_request.asyncio(client=client, request_id=as_file.request_id)
        assert isinstance(record, models.RequestView)
        assert record.status is models.PublicStatus.COMPLETED
        assert isinstance(record.params, models.RequestParams)
        assert record.params.light_source is models.LightSource.LEFT_LIGHT
        assert isinstance(record.params.seed, int)
        [attempt] = record.backend.attempts
        assert (attempt.backend, attempt.outcome.value) == ("local", "ok")
        assert record.timings["total_ms"] > 0
        [output] = record.outputs
        assert record.output == output.url

        listed = await list_requests.asyncio(client=client, limit=10)
        assert isinstance(listed, models.RequestList)
        assert [item.request_id for item in listed.data] == [
            to_cancel.request_id,
            as_file.request_id,
            as_json.request_id,
        ]
        completed = await list_requests.asyncio(client=client, status=models.PublicStatus.COMPLETED)
        assert len(completed.data) == 2

        image_file = await get_request_output.asyncio(
            client=client, request_id=as_file.request_id, index=0
        )
        assert isinstance(image_file, types.File)
        image = Image.open(image_file.payload)
        assert (image.format, image.size) == ("PNG", (256, 256))

        account = await get_account.asyncio(client=client)
        assert isinstance(account, models.AccountView)
        assert account.name == tenant.name
        credits = await get_user_credits.asyncio(client=client)
        assert isinstance(credits, models.UserCredits)
        # `credits` is a Python builtin: the generator names the attribute `credits_`.
        assert credits.credits_ == account.credits_ > 0


async def test_a_generated_client_without_a_key_gets_a_typed_401(
    generated: Any, app: FastAPI, tenant: TenantKey
) -> None:
    models = module(generated, "models")
    get_account = module(generated, "api.account.get_account")
    client_module = module(generated, "client")
    async with client_module.Client(
        base_url="http://testserver", httpx_args={"transport": httpx.ASGITransport(app=app)}
    ) as client:
        response = await get_account.asyncio_detailed(client=client)
    assert response.status_code == 401
    assert isinstance(response.parsed, models.ErrorBody)
    assert "x-api-key" in response.parsed.error


async def test_a_generated_client_runs_a_batch_reads_usage_and_manages_scoped_keys(
    generated: Any,
    app: FastAPI,
    tenant: TenantKey,
    background_worker: None,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    models = module(generated, "models")
    submit_relight = module(generated, "api.relight.submit_relight")
    create_batch = module(generated, "api.batches.create_batch")
    get_batch = module(generated, "api.batches.get_batch")
    get_request_status = module(generated, "api.requests.get_request_status")
    list_batches = module(generated, "api.batches.list_batches")
    get_usage = module(generated, "api.account.get_usage")
    get_usage_csv = module(generated, "api.account.get_usage_csv")
    create_key = module(generated, "api.keys.create_key")
    list_keys = module(generated, "api.keys.list_keys")
    revoke_key = module(generated, "api.keys.revoke_key")
    manager = await key_for(sessionmaker, tenant, sorted(ALL_SCOPES), label="manager")
    fast = {**FAST, "output_format": models.OutputFormat(FAST["output_format"])}

    def item(prompt: str, priority: Any) -> Any:
        return models.SubmitBody(
            prompt=prompt, subject_image=SMALL_PNG_BASE64, priority=priority, **fast
        )

    async with authenticated(generated, app, manager, bearer=True) as client:
        # A batch with a deadline (the `Cancel-After` header is a parameter) and lanes.
        accepted = await create_batch.asyncio(
            client=client,
            body=models.BatchBody(
                requests=[item("cat", models.Priority.NORMAL), item("dog", models.Priority.LOW)]
            ),
            cancel_after="10m",
        )
        assert isinstance(accepted, models.BatchAccepted)
        assert len(accepted.request_ids) == 2
        # A single submit: the 202 carries the signed `stream_url` a browser can open.
        single = await submit_relight.asyncio(
            client=client, body=item("bird", models.Priority.LOW), cancel_after="1h"
        )
        assert isinstance(single, models.SubmitAccepted)
        assert single.priority is models.Priority.LOW
        assert single.deadline_at is not None
        assert f"/v2/requests/{single.request_id}/status/stream?" in single.stream_url
        assert "signature=" in single.stream_url

        # A worker in the background: a burst worker would wait for the deadlines' checks.
        async def all_completed() -> bool:
            batch = await get_batch.asyncio(client=client, batch_id=accepted.batch_id)
            assert isinstance(batch, models.BatchView)
            status = await get_request_status.asyncio(client=client, request_id=single.request_id)
            return bool(
                batch.status is models.BatchViewStatus.COMPLETED
                and status.status is models.PublicStatus.COMPLETED
            )

        await wait_until(all_completed, timeout_s=120, what="the batch and the request completed")
        batch = await get_batch.asyncio(client=client, batch_id=accepted.batch_id)
        assert sorted(view.request_id for view in batch.requests) == sorted(accepted.request_ids)
        assert {view.status for view in batch.requests} == {models.PublicStatus.COMPLETED}
        assert batch.credits_charged > 0
        batches = await list_batches.asyncio(client=client, limit=10)
        assert isinstance(batches, models.BatchList)
        [summary] = batches.data
        assert (summary.batch_id, summary.item_count) == (accepted.batch_id, 2)
        assert summary.status is models.BatchSummaryStatus.COMPLETED

        # Usage, as JSON models and as CSV text (an operation of its own).
        usage = await get_usage.asyncio(client=client, group_by=models.GroupBy.DAY)
        assert isinstance(usage, models.UsageReport)
        assert usage.totals.requests == 3
        assert usage.totals.completed == 3
        # The single request was charged too.
        assert usage.totals.credits_charged > batch.credits_charged
        csv_text = await get_usage_csv.asyncio(client=client, group_by=models.GroupBy.DAY)
        assert isinstance(csv_text, str)
        header, *rows = csv_text.strip().splitlines()
        assert header.startswith("period,")
        assert len(rows) == len(usage.data) == 1

        # A scoped key: created, listed, refused where its scope does not reach, revoked.
        created = await create_key.asyncio(
            client=client,
            body=models.NewKeyRequest(label="reader", scopes=["requests:read"]),
        )
        assert isinstance(created, models.NewKeyView)
        assert created.scopes == ["requests:read"]
        keys = await list_keys.asyncio(client=client)
        assert isinstance(keys, models.KeyList)
        assert created.id in {key.id for key in keys.data}
        assert all(not hasattr(key, "key") for key in keys.data)

        reader = TenantKey(tenant_id=tenant.tenant_id, name=tenant.name, key=created.key)
        async with authenticated(generated, app, reader, bearer=False) as as_reader:
            refused = await submit_relight.asyncio_detailed(
                client=as_reader, body=item("cat", models.Priority.NORMAL)
            )
            assert refused.status_code == 403
            assert isinstance(refused.parsed, models.ErrorBody)
            assert refused.parsed.code == "insufficient_scope"
            assert "relight:submit" in refused.parsed.error
            readable = await get_batch.asyncio(client=as_reader, batch_id=accepted.batch_id)
            assert isinstance(readable, models.BatchView)

            revoked = await revoke_key.asyncio(client=client, key_id=created.id)
            assert isinstance(revoked, models.KeyView)
            assert revoked.revoked_at is not None
            gone = await get_batch.asyncio_detailed(client=as_reader, batch_id=accepted.batch_id)
            assert gone.status_code == 401
            assert isinstance(gone.parsed, models.ErrorBody)
