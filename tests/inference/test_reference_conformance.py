"""Conformance: the IC-Light engine gives the reference demo's pixels, bit for bit.

The reference is `reference_demo.ReferenceDemo`, a plain re-implementation of lllyasviel/IC-Light's
`gradio_demo.py` on diffusers' pipelines that shares no helper with the engine. Both run the
same tiny model (calibrated to be sensitive: a one-pixel shift moves the output by far more than
a rounding step, see test_tiny_model.py), on the CPU in fp32 with one torch thread, with the same
subject, seed and parameters; every output image must be byte-identical. A batch case runs again
with two threads, where a VAE batch rounds differently from single-image VAE calls (up to 2
levels), so encoding and decoding image by image would fail it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from inference.engines.iclight import ICLightEngine
from relight.core.images import decode_image
from relight.core.params import RelightParams
from tests.inference.reference_demo import ReferenceDemo, composite_by_alpha, demo_arguments

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LONG_PROMPT = ", ".join(
    ["a cat on a sofa in the warm light of the setting sun through a window"] * 8
)
LONG_NEGATIVE = ", ".join(["lowres, bad anatomy, bad hands, cropped, worst quality"] * 10)
# Small and quick, but every stage of the pipeline runs (both passes, both VAE directions).
BASE: dict[str, Any] = {
    "prompt": "a cat, sunset",
    "width": 256,
    "height": 320,
    "steps": 3,
    "highres_scale": 1.0,
    "light_source": "None",
}
# (case id, subject, parameters over BASE, torch threads)
CASES: list[tuple[str, str, dict[str, Any], int]] = [
    ("light-none", "wide", {}, 1),
    ("light-left", "wide", {"light_source": "Left Light"}, 1),
    ("light-right", "wide", {"light_source": "Right Light"}, 1),
    ("light-top", "wide", {"light_source": "Top Light"}, 1),
    ("light-bottom", "wide", {"light_source": "Bottom Light"}, 1),
    ("two-images", "wide", {"number_of_images": 2, "light_source": "Left Light"}, 1),
    ("two-images-no-light", "wide", {"number_of_images": 2}, 1),
    ("two-images-two-threads", "wide", {"number_of_images": 2, "light_source": "Top Light"}, 2),
    ("cfg-1", "wide", {"cfg": 1.0}, 1),
    ("cfg-7", "wide", {"cfg": 7.0, "light_source": "Bottom Light"}, 1),
    ("long-prompts", "wide", {"prompt": LONG_PROMPT, "negative_prompt": LONG_NEGATIVE}, 1),
    ("empty-appended-and-negative", "wide", {"appended_prompt": "", "negative_prompt": ""}, 1),
    ("rgba-subject", "rgba", {"light_source": "Right Light"}, 1),
    ("highres-2.0", "wide", {"width": 256, "height": 256, "highres_scale": 2.0}, 1),
    ("highres-1.5-default", "wide", {"highres_scale": 1.5, "light_source": "Top Light"}, 1),
    ("lowres-denoise-0.5", "wide", {"lowres_denoise": 0.5, "light_source": "Left Light"}, 1),
    ("highres-denoise-1.0", "wide", {"highres_denoise": 1.0}, 1),
    ("width-896", "wide", {"width": 896, "height": 256, "light_source": "Left Light"}, 1),
    ("width-896-top", "tall", {"width": 256, "height": 896, "light_source": "Top Light"}, 1),
    ("square-subject", "square", {"light_source": "Right Light"}, 1),
    ("tall-subject", "tall", {}, 1),
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> ICLightEngine:
    return ICLightEngine.from_dir(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> ReferenceDemo:
    return ReferenceDemo(tiny_model_dir, torch.device("cpu"))


def _subject(kind: str) -> Image.Image:
    with Image.open(EXAMPLES / "chelsea.png") as opened:
        cat = opened.convert("RGB")  # 451×300: wider than any W×H asked here
    if kind == "wide":
        return cat
    if kind == "square":
        return cat.crop((80, 0, 380, 300))
    if kind == "tall":
        return cat.crop((130, 0, 317, 300))  # 187×300, taller than 256×320
    mask = Image.new("L", cat.size, 0)
    ImageDraw.Draw(mask).ellipse((90, 20, 360, 290), fill=255)
    cut_out = cat.copy()
    cut_out.putalpha(mask.resize(cat.size))
    return cut_out


@pytest.mark.parametrize(
    ("subject", "overrides", "threads"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_engine_pixels_equal_the_reference_demo(
    engine: ICLightEngine,
    reference: ReferenceDemo,
    subject: str,
    overrides: dict[str, Any],
    threads: int,
) -> None:
    params = RelightParams(**{**BASE, **overrides})
    seed = 12345
    image = _subject(subject)
    torch.set_num_threads(threads)

    ours = [np.asarray(out) for out in engine.relight(image, params, seed)]
    foreground = composite_by_alpha(image) if image.mode == "RGBA" else np.asarray(image)
    theirs = reference.process(foreground, **demo_arguments(params, seed))

    assert len(ours) == len(theirs) == params.number_of_images
    for index, (mine, demo) in enumerate(zip(ours, theirs, strict=True)):
        assert mine.shape == demo.shape, f"image {index}: {mine.shape} vs the demo's {demo.shape}"
        difference = np.abs(mine.astype(np.int16) - demo.astype(np.int16))
        assert np.array_equal(mine, demo), (
            f"image {index} differs from the reference demo: max {difference.max()} levels, "
            f"{(difference > 0).mean():.1%} of values"
        )


def test_the_long_prompt_cases_span_several_75_token_pieces(reference: ReferenceDemo) -> None:
    assert len(reference.encode_text(LONG_PROMPT)) >= 3
    assert len(reference.encode_text(LONG_NEGATIVE)) == 2


def test_the_deliberate_differences_change_nothing_when_they_do_not_apply(
    engine: ICLightEngine,
) -> None:
    """Upload decoding (EXIF orientation, mode normalisation) and alpha compositing leave an
    untagged RGB subject, and an opaque RGBA one, exactly as the demo would see them."""
    torch.set_num_threads(1)
    cat = _subject("wide")
    buffer = io.BytesIO()
    cat.save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue(), max_bytes=10_000_000, max_pixels=10_000_000)
    assert decoded.mode == "RGB"
    assert decoded.tobytes() == cat.tobytes()

    opaque = cat.copy()
    opaque.putalpha(255)
    params = RelightParams(**BASE)
    from_rgb = engine.relight(decoded, params, 3)[0]
    from_opaque_rgba = engine.relight(opaque, params, 3)[0]
    assert from_rgb.tobytes() == from_opaque_rgba.tobytes()
