"""RelightParams: Segmind's ic-light request contract (fields, defaults, ranges, enums).

The field names, defaults and bounds are Segmind's, so a Segmind client can point at Relight
unchanged. Extensions that Segmind lacks live in `SubmitOptions` (webhooks, backend choice).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator

from relight.core.client_model import ClientModel

SIZE_CHOICES: tuple[int, ...] = tuple(range(256, 1025, 64))
SEED_MAX = 999_999_999_999_999


class LightSource(StrEnum):
    NONE = "None"
    LEFT = "Left Light"
    RIGHT = "Right Light"
    TOP = "Top Light"
    BOTTOM = "Bottom Light"


class BackgroundSource(StrEnum):
    """What IC-Light's background-conditioned (fbc) model relights the subject to match.

    The values of the reference demo (`gradio_demo_bg.py`): the uploaded background, mirrored
    or not; a gray gradient from a side (224 → 32, used as the background, not as a start); or
    flat gray 64.
    """

    UPLOAD = "Use Background Image"
    UPLOAD_FLIP = "Use Flipped Background Image"
    LEFT = "Left Light"
    RIGHT = "Right Light"
    TOP = "Top Light"
    BOTTOM = "Bottom Light"
    AMBIENT = "Ambient"

    @property
    def needs_image(self) -> bool:
        """Whether this source is built from the request's `background_image`."""
        return self in (BackgroundSource.UPLOAD, BackgroundSource.UPLOAD_FLIP)


class OutputFormat(StrEnum):
    WEBP = "webp"
    JPG = "jpg"
    PNG = "png"

    @property
    def content_type(self) -> str:
        return {"webp": "image/webp", "jpg": "image/jpeg", "png": "image/png"}[self.value]


class Backend(StrEnum):
    """The name of a backend, as a request asks for one (`backend`) and the job records it;
    `auto` lets routing choose (`relight.backends.routing`)."""

    AUTO = "auto"
    GPU = "gpu"
    SEGMIND = "segmind"
    LOCAL = "local"


def _check_size(value: int) -> int:
    if value not in SIZE_CHOICES:
        raise ValueError(f"must be a multiple of 64 from 256 to 1024, got {value}")
    return value


class RelightParams(ClientModel):
    """Everything that decides the pixels of a result (the subject image aside)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    prompt: Annotated[str, Field(min_length=1, max_length=2000)]
    appended_prompt: Annotated[str, Field(max_length=2000)] = "best quality"
    negative_prompt: Annotated[str, Field(max_length=2000)] = (
        "lowres, bad anatomy, bad hands, cropped, worst quality"
    )
    cfg: Annotated[float, Field(ge=1, le=32)] = 2
    width: int = 512
    height: int = 640
    steps: Annotated[int, Field(ge=1, le=100)] = 25
    seed: Annotated[int | None, Field(ge=-1, le=SEED_MAX)] = None
    highres_scale: Annotated[float, Field(ge=1, le=3)] = 1.5
    highres_denoise: Annotated[float, Field(ge=0.1, le=1)] = 0.5
    lowres_denoise: Annotated[float, Field(ge=0.1, le=1)] = 0.9
    light_source: LightSource = LightSource.NONE
    # Relight's extension: set, the fbc model relights onto a background (light_source and
    # lowres_denoise then play no part, as in the reference's fbc demo).
    background_source: BackgroundSource | None = None
    number_of_images: Annotated[int, Field(ge=1, le=12)] = 1
    output_format: OutputFormat = OutputFormat.WEBP
    output_quality: Annotated[int, Field(ge=0, le=100)] = 80

    @field_validator("width", "height")
    @classmethod
    def _size_in_choices(cls, value: int) -> int:
        return _check_size(value)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @property
    def full_prompt(self) -> str:
        """The prompt the model sees, as the IC-Light reference builds it (always with ", ")."""
        return f"{self.prompt}, {self.appended_prompt}"

    @property
    def output_size(self) -> tuple[int, int]:
        return output_size(self.width, self.height, self.highres_scale)


def output_size(width: int, height: int, highres_scale: float) -> tuple[int, int]:
    """`round(W·scale/64)·64 × round(H·scale/64)·64`, as IC-Light's gradio_demo computes it."""
    return (
        int(round(width * highres_scale / 64.0) * 64),
        int(round(height * highres_scale / 64.0) * 64),
    )


class Priority(StrEnum):
    """A request's lane within its tenant's queue: a higher lane starts first; between tenants
    fair turns decide (`relight.jobs.queue`). `high` needs an operator's leave
    (`tenant.allowed_lanes`)."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for the lane that starts first."""
        return {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}[self]


# Lanes a new tenant may use: `high` jumps its own queue, so an operator grants it.
DEFAULT_LANES: tuple[str, ...] = (Priority.NORMAL.value, Priority.LOW.value)
PRIORITY_DESCRIPTION = (
    "Relight's extension: the request's lane within your own queue (high starts before normal, "
    "normal before low; other accounts keep their fair turns). `high` needs an operator's leave"
)


WebhookEvent = Literal["completed", "start"]


def default_webhook_events() -> list[WebhookEvent]:
    return ["completed"]


class SubmitOptions(ClientModel):
    """Relight's extensions to Segmind's body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backend = Backend.AUTO
    webhook_url: Annotated[str | None, Field(max_length=2048)] = None
    webhook_events: list[WebhookEvent] = Field(default_factory=default_webhook_events)
    priority: Priority = Priority.NORMAL
