"""The subject crop: IC-Light's reference arithmetic, with a bound for freak aspect ratios."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relight.core.images import resize_and_center_crop
from tests.inference.reference_demo import center_crop

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    with Image.open(EXAMPLES / "chelsea.png") as opened:
        return opened.convert("RGB")


@pytest.mark.parametrize("source", [(451, 300), (300, 300), (187, 300), (1000, 999), (40, 64)])
@pytest.mark.parametrize("target", [(256, 320), (512, 640), (896, 256), (1024, 1024), (768, 960)])
def test_the_crop_is_the_reference_demos_pixel_for_pixel(
    cat: Image.Image, source: tuple[int, int], target: tuple[int, int]
) -> None:
    subject = cat.resize(source, Image.Resampling.BICUBIC)
    ours = np.asarray(resize_and_center_crop(subject, *target))
    assert ours.shape == (target[1], target[0], 3)
    assert np.array_equal(ours, center_crop(np.asarray(subject), *target))


def test_beyond_the_bound_only_the_needed_region_is_resampled_within_two_levels(
    cat: Image.Image,
) -> None:
    # 2000×300 into 256×320 scales the whole image to 2133×320, more than 4× the target.
    wide = cat.resize((2000, 300), Image.Resampling.BICUBIC)
    exact = np.asarray(resize_and_center_crop(wide, 256, 320), dtype=np.int16)
    bounded = np.asarray(resize_and_center_crop(wide, 256, 320, exact_max_pixels=0), np.int16)
    assert bounded.shape == exact.shape == (320, 256, 3)
    assert np.abs(exact - bounded).max() <= 2


def test_a_freak_aspect_ratio_never_builds_a_gigantic_image() -> None:
    # The whole-image resize would be 3,072,000 × 1,024 pixels (9 GB).
    thread = Image.new("RGB", (3000, 1), (200, 10, 10))
    cropped = resize_and_center_crop(thread, 1024, 1024)
    assert cropped.size == (1024, 1024)
    assert np.asarray(cropped)[512, 512].tolist() == [200, 10, 10]
