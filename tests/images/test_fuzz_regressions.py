"""Every input the image fuzzer (`bench/fuzz_images.py`) ever broke something with, replayed
through every fuzzed function: each must now return a valid result or refuse with a 4xx.

The inputs live in `tests/images/fuzz_corpus/<target>/`, where the fuzzer writes them; what "valid"
means is `bench/fuzz_targets.py`, the fuzzer's own checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fuzz_images import TARGET_NAMES
from bench.fuzz_targets import TARGETS

CORPUS = Path(__file__).parent / "fuzz_corpus"
INPUTS = sorted(CORPUS.glob("*/*"))


def test_the_corpus_is_where_the_fuzzer_writes_it() -> None:
    assert list(TARGETS) == TARGET_NAMES
    assert {path.parent.name for path in INPUTS} <= set(TARGETS)
    assert INPUTS, f"no fuzz inputs under {CORPUS}"


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("path", INPUTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_an_input_that_once_broke_the_image_code_gets_a_result_or_a_4xx(
    path: Path, target: str
) -> None:
    TARGETS[target](path.read_bytes())
