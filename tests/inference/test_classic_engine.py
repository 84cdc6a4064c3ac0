"""The classic engine: sizes, light direction and colour, variations, determinism, masks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageDraw

from inference.engines.base import RelightEngine
from inference.engines.classic import ClassicEngine, light_style
from relight.core.images import encode_image, image_size, resize_and_center_crop
from relight.core.params import LightSource, OutputFormat, RelightParams

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NEUTRAL_PROMPT = "a photo, studio light"


@pytest.fixture(scope="module")
def engine() -> ClassicEngine:
    return ClassicEngine()


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    with Image.open(EXAMPLES / "chelsea.png") as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    with Image.open(EXAMPLES / "astronaut.png") as image:
        return image.convert("RGB")


def _gray(image: Image.Image) -> npt.NDArray[np.float64]:
    return np.asarray(image.convert("L"), dtype=np.float64)


def _halves(image: Image.Image) -> dict[str, float]:
    lum = _gray(image)
    height, width = lum.shape
    return {
        "left": float(lum[:, : width // 2].mean()),
        "right": float(lum[:, width // 2 :].mean()),
        "top": float(lum[: height // 2].mean()),
        "bottom": float(lum[height // 2 :].mean()),
    }


def _relight_one(
    engine: ClassicEngine, subject: Image.Image, seed: int = 7, **fields: object
) -> Image.Image:
    params = RelightParams.model_validate({"prompt": NEUTRAL_PROMPT, **fields})
    images = engine.relight(subject, params, seed)
    assert len(images) == 1
    return images[0]


def test_implements_the_engine_protocol(engine: ClassicEngine) -> None:
    as_protocol: RelightEngine = engine
    assert as_protocol.name == "classic"
    assert as_protocol.model


def test_default_output_size(engine: ClassicEngine, cat: Image.Image) -> None:
    image = _relight_one(engine, cat)
    assert image.mode == "RGB"
    assert image.size == (768, 960)


@pytest.mark.parametrize(
    ("width", "height", "scale", "expected"),
    [
        (384, 256, 2.0, (768, 512)),
        (1024, 256, 1.0, (1024, 256)),
        (576, 832, 1.3, (768, 1088)),
    ],
)
def test_output_size_follows_highres_formula(
    engine: ClassicEngine,
    astronaut: Image.Image,
    width: int,
    height: int,
    scale: float,
    expected: tuple[int, int],
) -> None:
    params = RelightParams(prompt="x", width=width, height=height, highres_scale=scale)
    assert params.output_size == expected
    image = _relight_one(engine, astronaut, width=width, height=height, highres_scale=scale)
    assert image.mode == "RGB"
    assert image.size == expected


@pytest.mark.parametrize("mode", ["L", "LA", "P"])
def test_odd_modes_and_tiny_inputs(engine: ClassicEngine, cat: Image.Image, mode: str) -> None:
    image = _relight_one(engine, cat.resize((37, 23)).convert(mode))
    assert image.size == (768, 960)
    assert image.mode == "RGB"


@pytest.mark.parametrize(
    ("source", "bright", "dark"),
    [
        (LightSource.LEFT, "left", "right"),
        (LightSource.RIGHT, "right", "left"),
        (LightSource.TOP, "top", "bottom"),
        (LightSource.BOTTOM, "bottom", "top"),
    ],
)
def test_light_direction_on_uniform_gray(
    engine: ClassicEngine, source: LightSource, bright: str, dark: str
) -> None:
    gray = Image.new("RGB", (300, 300), (128, 128, 128))
    halves = _halves(_relight_one(engine, gray, light_source=source))
    assert halves[bright] > 1.1 * halves[dark]
    # The perpendicular axis stays roughly balanced.
    across = ("top", "bottom") if bright in ("left", "right") else ("left", "right")
    assert halves[across[0]] == pytest.approx(halves[across[1]], rel=0.08)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_light_source_has_no_strong_direction(engine: ClassicEngine, seed: int) -> None:
    gray = Image.new("RGB", (300, 300), (128, 128, 128))
    halves = _halves(_relight_one(engine, gray, seed=seed, light_source=LightSource.NONE))
    assert halves["left"] == pytest.approx(halves["right"], rel=0.1)
    assert halves["top"] == pytest.approx(halves["bottom"], rel=0.1)


def test_light_direction_on_a_photo(engine: ClassicEngine, cat: Image.Image) -> None:
    left = _halves(_relight_one(engine, cat, light_source=LightSource.LEFT))
    right = _halves(_relight_one(engine, cat, light_source=LightSource.RIGHT))
    assert left["left"] / left["right"] > 1.3 * right["left"] / right["right"]
    assert left["left"] > right["left"]
    assert right["right"] > left["right"]


def _red_blue_ratio(image: Image.Image) -> float:
    pixels = np.asarray(image, dtype=np.float64)
    return float(pixels[..., 0].mean() / pixels[..., 2].mean())


def test_prompt_sets_light_colour(engine: ClassicEngine, astronaut: Image.Image) -> None:
    sunset = _relight_one(engine, astronaut, prompt="Portrait at SUNSET")
    moon = _relight_one(engine, astronaut, prompt="portrait in moonlight")
    neutral = _relight_one(engine, astronaut, prompt="a portrait of an astronaut")
    assert _red_blue_ratio(sunset) > 1.3 * _red_blue_ratio(neutral)
    assert _red_blue_ratio(neutral) > 1.1 * _red_blue_ratio(moon)
    assert _gray(moon).mean() < _gray(neutral).mean()


def test_prompt_sets_light_strength(engine: ClassicEngine, cat: Image.Image) -> None:
    dim = _gray(_relight_one(engine, cat, prompt="a dim, dark room"))
    bright = _gray(_relight_one(engine, cat, prompt="bright sunny day"))
    assert bright.mean() > 1.15 * dim.mean()
    gray = Image.new("RGB", (300, 300), (128, 128, 128))
    soft = _halves(_relight_one(engine, gray, prompt="soft", light_source=LightSource.LEFT))
    hard = _halves(_relight_one(engine, gray, prompt="dramatic", light_source=LightSource.LEFT))
    assert hard["left"] / hard["right"] > soft["left"] / soft["right"]


def test_keyword_table() -> None:
    neutral = light_style("a cat on a sofa")
    assert neutral.key == (1.0, 1.0, 1.0)
    assert neutral.intensity == 1.0
    assert neutral.contrast == 1.0
    warm = light_style("Golden Hour")
    assert warm.key is not None
    assert warm.key[0] > warm.key[2]
    night = light_style("MOONLIGHT")
    assert night.key is not None
    assert night.key[2] > night.key[0]
    assert night.intensity < 1.0
    assert light_style("dramatic").contrast > 1.0
    # Word boundaries: "swarm" is not "warm".
    assert light_style("a swarm of bees").key == (1.0, 1.0, 1.0)


def test_variations_are_distinct_and_report_progress(
    engine: ClassicEngine, cat: Image.Image
) -> None:
    fractions: list[float] = []
    params = RelightParams(prompt="sunset", number_of_images=3, light_source=LightSource.LEFT)
    images = engine.relight(cat, params, 11, progress=fractions.append)
    assert len(images) == 3
    # 16 stages: the scene (2 + 2, as much as one variation), then each variation's light field
    # and three channels; each variation ends on its quarter of the remaining work.
    assert fractions == pytest.approx([stage / 16 for stage in (2, *range(4, 17))])
    assert [fractions.index(boundary) for boundary in (8 / 16, 12 / 16, 1.0)] == [5, 9, 13]
    pixels = [image.tobytes() for image in images]
    assert len(set(pixels)) == 3
    assert all(image.size == (768, 960) for image in images)


def test_progress_moves_through_the_stages_of_a_single_image(
    engine: ClassicEngine, cat: Image.Image
) -> None:
    fractions: list[float] = []
    engine.relight(cat, RelightParams(prompt="sunset"), 3, progress=fractions.append)
    # Before: one call, 1.0, at the very end (the job's progress stayed 0 until then).
    assert fractions == pytest.approx([2 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1.0])


@pytest.mark.parametrize("output_format", list(OutputFormat))
def test_same_seed_gives_identical_bytes(
    engine: ClassicEngine, cat: Image.Image, output_format: OutputFormat
) -> None:
    params = RelightParams(prompt="neon", light_source=LightSource.TOP, output_format=output_format)
    first = ClassicEngine().relight(cat, params, 123)[0]
    second = engine.relight(cat.copy(), params, 123)[0]
    assert first.tobytes() == second.tobytes()
    quality = params.output_quality
    assert encode_image(first, output_format, quality) == encode_image(
        second, output_format, quality
    )


def test_different_seeds_differ(engine: ClassicEngine, cat: Image.Image) -> None:
    for source in (LightSource.NONE, LightSource.LEFT):
        first = _relight_one(engine, cat, seed=1, light_source=source)
        second = _relight_one(engine, cat, seed=2, light_source=source)
        assert first.tobytes() != second.tobytes()
    huge = _relight_one(engine, cat, seed=999_999_999_999_999)
    assert huge.size == (768, 960)


def _masked_astronaut(astronaut: Image.Image, alpha_fill: int = 255) -> Image.Image:
    """The astronaut inside an ellipse; outside it pure red pixels that are fully transparent."""
    alpha = Image.new("L", astronaut.size, 0)
    ImageDraw.Draw(alpha).ellipse((96, 40, 416, 512), fill=alpha_fill)
    red = Image.new("RGB", astronaut.size, (255, 0, 0))
    rgba = Image.composite(astronaut, red, alpha)
    rgba.putalpha(alpha)
    return rgba


def test_rgba_subject_is_composited_on_gray(engine: ClassicEngine, astronaut: Image.Image) -> None:
    rgba = _masked_astronaut(astronaut)
    image = _relight_one(engine, rgba)
    assert image.mode == "RGB"
    assert image.size == (768, 960)
    pixels = np.asarray(image, dtype=np.float64)
    # Corners lie outside the ellipse: a neutrally lit gray card, not the hidden red.
    for corner in (pixels[:40, :40], pixels[:40, -40:], pixels[-40:, :40], pixels[-40:, -40:]):
        red, green, blue = corner.reshape(-1, 3).mean(axis=0)
        assert abs(red - blue) < 20
        assert abs(red - green) < 20
        assert 60 < green < 200
    # Inside, the astronaut is still there.
    reference = _gray(resize_and_center_crop(astronaut, 512, 640).resize(image.size))
    centre = (slice(300, 700), slice(250, 520))
    assert np.corrcoef(reference[centre].ravel(), _gray(image)[centre].ravel())[0, 1] > 0.8


def test_fully_transparent_subject_leaves_only_the_lit_background(
    engine: ClassicEngine, astronaut: Image.Image
) -> None:
    image = _relight_one(engine, _masked_astronaut(astronaut, alpha_fill=0))
    lum = _gray(image)
    # Only the smooth light field is left: no edges of the hidden picture.
    assert np.abs(np.diff(lum, axis=1)).max() <= 3
    assert np.abs(np.diff(lum, axis=0)).max() <= 3


@pytest.mark.parametrize(
    ("source", "prompt"),
    [
        (LightSource.LEFT, "dramatic"),
        (LightSource.TOP, "sunset"),
        (LightSource.BOTTOM, "candle light"),
        (LightSource.NONE, "neon"),
    ],
)
def test_subject_stays_recognisable(
    engine: ClassicEngine,
    cat: Image.Image,
    astronaut: Image.Image,
    source: LightSource,
    prompt: str,
) -> None:
    for subject in (cat, astronaut):
        image = _relight_one(engine, subject, prompt=prompt, light_source=source)
        reference = _gray(resize_and_center_crop(subject, 512, 640).resize(image.size))
        assert np.corrcoef(reference.ravel(), _gray(image).ravel())[0, 1] > 0.6


def test_output_format_and_quality_are_honoured(engine: ClassicEngine, cat: Image.Image) -> None:
    image = _relight_one(engine, cat)
    low = encode_image(image, OutputFormat.JPG, 10)
    high = encode_image(image, OutputFormat.JPG, 95)
    assert low.startswith(b"\xff\xd8\xff")
    assert len(low) < len(high)
    webp = encode_image(image, OutputFormat.WEBP, 80)
    assert webp[8:12] == b"WEBP"
    png = encode_image(image, OutputFormat.PNG, 80)
    assert png.startswith(b"\x89PNG")
    for data in (low, high, webp, png):
        assert image_size(data) == (768, 960)
    with Image.open(io.BytesIO(png)) as decoded:
        assert decoded.convert("RGB").tobytes() == image.tobytes()
