"""Turns job rows into the public JSON views; their URLs come from `relight.core.storage.urls`."""

from __future__ import annotations

from relight.core.models import Job, JobOutput, JobStatus
from relight.core.params import Priority
from relight.core.storage.urls import UrlBuilder
from relight.jobs.deadlines import DEADLINE_EXCEEDED, deadline_message
from relight.jobs.schemas import (
    BackendAttemptView,
    BackendView,
    CreditsView,
    OutputView,
    RequestParams,
    RequestView,
    StatusView,
    SubmitAccepted,
)

CANCELED_MESSAGE = "the request was canceled"
CANCELED_CODE = "canceled"


def _error(job: Job) -> tuple[str | None, str | None]:
    """`(error, error_code)`: the message and the code of a FAILED or CANCELED job."""
    status = job.job_status
    if status is JobStatus.CANCELED and job.error_code == DEADLINE_EXCEEDED:
        return job.error_message or deadline_message(), DEADLINE_EXCEEDED
    if status is JobStatus.CANCELED:
        return CANCELED_MESSAGE, CANCELED_CODE
    if status is not JobStatus.FAILED:
        return None, None
    code = job.error_code or "backend_failed"
    return job.error_message or code, code


def _segmind_output(job: Job, urls: list[str]) -> str | list[str] | None:
    """Segmind's `output`: the image URL, or the list of them when several were asked for (so
    its type follows from the request, not from how many images happen to exist yet)."""
    if job.job_status is not JobStatus.SUCCEEDED:
        return None
    if job.params.get("number_of_images", 1) == 1:
        return urls[0] if urls else None
    return urls


def _public_params(job: Job) -> RequestParams:
    return RequestParams.model_validate({**job.params, "seed": job.seed})


def request_view(job: Job, outputs: list[JobOutput], urls: UrlBuilder) -> RequestView:
    output_urls = [urls.output_url(job.id, output.index, output.storage_key) for output in outputs]
    error, error_code = _error(job)
    return RequestView(
        request_id=job.id,
        status=job.job_status.public,
        params=_public_params(job),
        model_digest=job.model_digest,
        subject_image=job.input_url,
        background_image=job.background_url,
        output=_segmind_output(job, output_urls),
        outputs=[
            OutputView(
                index=output.index,
                url=url,
                content_type=output.content_type,
                width=output.width,
                height=output.height,
                bytes=output.bytes,
                seed=output.seed,
                sha256=output.sha256,
                expired_at=output.deleted_at,
            )
            for output, url in zip(outputs, output_urls, strict=True)
        ],
        error=error,
        error_code=error_code,
        credits=CreditsView(reserved=job.credits_reserved, charged=job.credits_charged),
        backend=BackendView(
            requested=job.backend_requested,
            used=job.backend_used,
            node=job.node,
            attempts=[BackendAttemptView.model_validate(entry) for entry in job.backend_calls],
        ),
        attempts=job.attempts,
        progress=job.progress,
        timings=job.timings,
        metrics=job.timings,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        priority=Priority(job.priority or Priority.NORMAL.value),
        deadline_at=job.deadline_at,
        status_url=urls.status_url(job.id),
        response_url=urls.response_url(job.id),
        stream_url=urls.stream_url(job.id),
    )


def status_view(job: Job, queue_position: int | None, urls: UrlBuilder | None = None) -> StatusView:
    status = job.job_status
    error, error_code = _error(job)
    return StatusView(
        request_id=job.id,
        status=status.public,
        queue_position=queue_position if status is JobStatus.QUEUED else None,
        progress=job.progress if status is JobStatus.RUNNING else None,
        error=error,
        error_code=error_code,
        metrics=job.timings,
        deadline_at=job.deadline_at,
        stream_url=urls.stream_url(job.id) if urls is not None else None,
    )


def accepted_view(job: Job, urls: UrlBuilder) -> SubmitAccepted:
    return SubmitAccepted(
        request_id=job.id,
        status=job.job_status.public,
        poll_url=urls.status_url(job.id),
        status_url=urls.status_url(job.id),
        response_url=urls.response_url(job.id),
        cancel_url=urls.cancel_url(job.id),
        stream_url=urls.stream_url(job.id),
        credits_reserved=job.credits_reserved,
        priority=Priority(job.priority or Priority.NORMAL.value),
        deadline_at=job.deadline_at,
    )
