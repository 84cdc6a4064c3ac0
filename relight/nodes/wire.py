"""The wire format between workers and GPU nodes (`POST /v1/relight`).

Request: JSON `{"image": <base64 bytes of the subject>, "params": RelightParams, "seed": int}`
(plus `"background"`, base64, for a `background_source` that uses an uploaded background) with
`Authorization: Bearer <RELIGHT_NODE_TOKEN>` when a token is set. A node whose engine does not
relight onto backgrounds (no fbc model) refuses a `background_source` with 422
`background_not_served`; `backgrounds` in its health and heartbeat says which it is.

Answer with `Accept: application/x-ndjson`: one JSON object per line, `{"event": "started"}`,
then `{"event": "progress", "progress": 0.4}` as the engine advances (and `{"event": "ping"}`
when it is quiet), then `{"event": "result", ...}` or `{"event": "error", "error", "code"}`.
Without it: the result object alone, as plain JSON. A result is `{"node", "engine", "model",
"model_digest", "seed", "images": [{"index", "content_type", "width", "height", "seed",
"data"}], "timings"}` with `data` base64; `model_digest` names the node's weights (the sha256 of
its model folder's manifest; null from a node without a model folder, or an older one).
Refusals before any work are ordinary JSON errors: 503 `node_busy` with `Retry-After` when
every render thread is taken, 401 without the token, 400/422 for bad input.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from relight.core.params import SEED_MAX, RelightParams

NDJSON = "application/x-ndjson"
RELIGHT_PATH = "/v1/relight"
HEALTH_PATH = "/healthz"


class NodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: Annotated[str, Field(min_length=1, description="the subject image, base64")]
    params: RelightParams
    seed: Annotated[int, Field(ge=0, le=SEED_MAX)]
    background: Annotated[
        str | None, Field(min_length=1, description="the background image, base64")
    ] = None


class NodeImage(BaseModel):
    index: int
    content_type: str
    width: int
    height: int
    seed: int
    data: str


class NodeResult(BaseModel):
    node: str
    engine: str
    model: str
    model_digest: str | None = None
    seed: int
    images: list[NodeImage]
    timings: dict[str, float] = Field(default_factory=dict)


class NodeHealth(BaseModel):
    status: str
    id: str
    url: str
    engine: str
    model: str
    device: str
    capacity: int
    in_flight: int
    version: str
    # Whether it relights onto backgrounds (IC-Light fbc), and how many images share a pass.
    backgrounds: bool = False
    max_batch_images: int = 1
    # The model folder's digest (as in every result) and the matting model, when there is one.
    model_digest: str | None = None
    matting: str | None = None
