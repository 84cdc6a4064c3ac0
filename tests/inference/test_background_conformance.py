"""Conformance of the fbc model: relighting onto a background gives the reference demo's pixels.

The reference is `ReferenceDemo.process_background`, a plain re-implementation of
lllyasviel/IC-Light's `gradio_demo_bg.py` on diffusers' pipelines sharing no helper with the
engine. Both run one tiny folder with the fc and the fbc offsets (so one engine serves both), on
the CPU in fp32 with one torch thread; every output image must be byte-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from inference.engines.iclight import ICLightEngine, ModelNotLoaded
from relight.core.params import BackgroundSource, RelightParams
from tests.inference.reference_demo import ReferenceDemo, composite_by_alpha, demo_arguments

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASE: dict[str, Any] = {
    "prompt": "a cat in a room",
    "width": 256,
    "height": 320,
    "steps": 3,
    "highres_scale": 1.0,
    "background_source": "Use Background Image",
}
CASES: list[tuple[str, str, dict[str, Any]]] = [
    *[
        (source.value.lower().replace(" ", "-"), "wide", {"background_source": source.value})
        for source in BackgroundSource
    ],
    ("two-images", "wide", {"number_of_images": 2}),
    ("two-images-left", "wide", {"number_of_images": 2, "background_source": "Left Light"}),
    ("rgba-subject", "rgba", {"background_source": "Use Flipped Background Image"}),
    ("cfg-1", "wide", {"cfg": 1.0}),
    ("highres-1.5", "wide", {"highres_scale": 1.5, "background_source": "Top Light"}),
    ("highres-denoise-1.0", "wide", {"highres_denoise": 1.0}),
    ("width-896", "wide", {"width": 896, "height": 256, "background_source": "Left Light"}),
    ("light-source-ignored", "wide", {"light_source": "Left Light", "lowres_denoise": 0.5}),
]


@pytest.fixture(scope="module")
def engine(tiny_fc_and_fbc_model_dir: Path) -> ICLightEngine:
    return ICLightEngine.from_dir(tiny_fc_and_fbc_model_dir, device="cpu")


@pytest.fixture(scope="module")
def reference(tiny_fc_and_fbc_model_dir: Path) -> ReferenceDemo:
    return ReferenceDemo(tiny_fc_and_fbc_model_dir, torch.device("cpu"), model="fbc")


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    with Image.open(EXAMPLES / "astronaut.png") as opened:
        return opened.convert("RGB")


def _subject(kind: str) -> Image.Image:
    with Image.open(EXAMPLES / "chelsea.png") as opened:
        cat = opened.convert("RGB")
    if kind == "wide":
        return cat
    mask = Image.new("L", cat.size, 0)
    ImageDraw.Draw(mask).ellipse((90, 20, 360, 290), fill=255)
    cat.putalpha(mask)
    return cat


@pytest.mark.parametrize(
    ("subject", "overrides"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_engine_pixels_equal_the_reference_background_demo(
    engine: ICLightEngine,
    reference: ReferenceDemo,
    scene: Image.Image,
    subject: str,
    overrides: dict[str, Any],
) -> None:
    params = RelightParams(**{**BASE, **overrides})
    assert params.background_source is not None
    seed = 12345
    image = _subject(subject)

    ours = [np.asarray(out) for out in engine.relight(image, params, seed, background=scene)]
    theirs = reference.process_background(
        composite_by_alpha(image) if image.mode == "RGBA" else np.asarray(image),
        np.asarray(scene),
        **demo_arguments(params, seed),
    )

    assert len(ours) == len(theirs) == params.number_of_images
    for index, (mine, demo) in enumerate(zip(ours, theirs, strict=True)):
        assert mine.shape == demo.shape == (*reversed(params.output_size), 3)
        difference = np.abs(mine.astype(np.int16) - demo.astype(np.int16))
        assert np.array_equal(mine, demo), (
            f"image {index} differs from the reference demo: max {difference.max()} levels, "
            f"{(difference > 0).mean():.1%} of values"
        )


def test_the_background_steers_the_output(engine: ICLightEngine, scene: Image.Image) -> None:
    params = RelightParams(**BASE)
    cat = _subject("wide")
    onto_scene = np.asarray(engine.relight(cat, params, 1, background=scene)[0], np.int16)
    flipped = scene.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    onto_flipped = np.asarray(engine.relight(cat, params, 1, background=flipped)[0], np.int16)
    assert np.abs(onto_scene - onto_flipped).mean() > 5


def test_an_uploaded_background_source_without_an_image_is_refused(engine: ICLightEngine) -> None:
    params = RelightParams(**BASE)
    with pytest.raises(ValueError, match="needs a background_image"):
        engine.relight(_subject("wide"), params, 1)


def test_a_folder_without_fbc_offsets_refuses_background_requests(
    tiny_model_dir: Path, scene: Image.Image
) -> None:
    fc_only = ICLightEngine.from_dir(tiny_model_dir, device="cpu")
    assert fc_only.variants == ["fc"]
    with pytest.raises(ModelNotLoaded, match=r"iclight_sd15_fbc\.safetensors"):
        fc_only.relight(_subject("wide"), RelightParams(**BASE), 1, background=scene)


def test_one_engine_serves_both_models(engine: ICLightEngine) -> None:
    assert engine.variants == ["fc", "fbc"]
    assert engine.model.startswith("iclight_sd15_fc+fbc/")
    text_only = RelightParams(prompt="a cat", width=256, height=320, steps=2, highres_scale=1.0)
    images = engine.relight(_subject("wide"), text_only, 1)
    assert [image.size for image in images] == [(256, 320)]
