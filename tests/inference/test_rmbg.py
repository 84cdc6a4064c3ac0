"""BRIA RMBG-1.4 built in: the published file's keys load strictly, the folder is found, and
the engine says which matting it uses (subject alpha > exported program > rmbg/ > none)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from inference.engines.iclight import ICLightEngine
from inference.iclight.images import composite_on_gray
from inference.iclight.rmbg import BriaRMBG, has_rmbg, load_rmbg
from inference.tiny_model import TINY_RMBG_WIDTH, write_tiny_rmbg
from tests.inference.rmbg_keys import read_keys_file, rmbg14_state_dict_shapes

# briaai/RMBG-1.4's model.safetensors: 176 MB of fp32, about 44 M parameters.
PUBLISHED_PARAMETERS = 44_046_790
PUBLISHED_KEYS = 798  # 112 REBNCONV blocks × 7 (with num_batches_tracked), conv_in, 6 sides


def test_the_fixture_is_the_derivation_from_the_reference_constructors() -> None:
    assert read_keys_file() == rmbg14_state_dict_shapes()
    assert len(read_keys_file()) == PUBLISHED_KEYS


def test_the_full_size_module_has_exactly_the_published_keys_and_shapes() -> None:
    network = BriaRMBG()
    ours = [(key, tuple(value.shape)) for key, value in network.state_dict().items()]
    assert ours == read_keys_file()  # same keys, shapes and order
    parameters = sum(parameter.numel() for parameter in network.parameters())
    assert parameters == PUBLISHED_PARAMETERS
    stored = sum(math.prod(shape) for key, shape in ours if "num_batches" not in key)
    assert 175e6 < stored * 4 < 177e6  # fp32 bytes, as the published file


def _published_like_state(with_counters: bool) -> dict[str, torch.Tensor]:
    """Random tensors with the published file's keys and shapes (the counters int64)."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in read_keys_file():
        if key.endswith("num_batches_tracked"):
            if with_counters:
                state[key] = torch.tensor(0, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


@pytest.mark.parametrize("with_counters", [True, False], ids=["with-counters", "no-counters"])
def test_a_state_dict_with_the_published_keys_loads_strictly(with_counters: bool) -> None:
    state = _published_like_state(with_counters)
    network = BriaRMBG()
    network.load_state_dict(state, strict=True)
    loaded = network.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())


def test_load_rmbg_reads_a_full_size_folder_and_runs_it(tmp_path: Path) -> None:
    folder = tmp_path / "rmbg"
    folder.mkdir()
    state = _published_like_state(with_counters=True)
    safetensors.torch.save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"in_ch": 3, "out_ch": 1}), "utf-8")
    network = load_rmbg(folder)
    assert not network.training
    assert network.conv_in.out_channels == 64
    with torch.inference_mode():
        mattes, features = network(torch.rand(1, 3, 64, 128) * 2 - 1)
    assert len(mattes) == len(features) == 6
    assert all(matte.shape == (1, 1, 64, 128) for matte in mattes)
    assert 0 <= float(mattes[0].min()) <= float(mattes[0].max()) <= 1


@pytest.fixture(scope="module")
def tiny_rmbg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_rmbg(tmp_path_factory.mktemp("tiny-rmbg") / "rmbg")


def test_load_rmbg_refuses_a_config_that_contradicts_the_weights(
    tiny_rmbg: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "rmbg"
    shutil.copytree(tiny_rmbg, folder)
    assert load_rmbg(folder).conv_in.out_channels == TINY_RMBG_WIDTH
    (folder / "config.json").write_text(json.dumps({"in_ch": 3, "out_ch": 2}), "utf-8")
    with pytest.raises(ValueError, match="declares in/out"):
        load_rmbg(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_rmbg(folder)


def test_the_tiny_rmbg_has_the_published_key_names(tiny_rmbg: Path) -> None:
    tiny = safetensors.torch.load_file(str(tiny_rmbg / "model.safetensors"))
    assert sorted(tiny) == sorted(key for key, _ in read_keys_file())


class RedIsSubject(torch.nn.Module):
    """A stand-in exported matting program: the red channel is the alpha."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image[:, :1]


def _export_red_is_subject(path: Path) -> Path:
    dims = {
        2: torch.export.Dim("height", min=64, max=4096),
        3: torch.export.Dim("width", min=64, max=4096),
    }
    program = torch.export.export(
        RedIsSubject(), (torch.rand(1, 3, 128, 192),), dynamic_shapes={"image": dims}
    )
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def rmbg_folder(
    tiny_model_dir: Path, tiny_rmbg: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny fc folder plus a tiny rmbg/ (a copy: the session's folder stays without)."""
    folder = tmp_path_factory.mktemp("with-rmbg") / "model"
    shutil.copytree(tiny_model_dir, folder)
    shutil.copytree(tiny_rmbg, folder / "rmbg")
    return folder


def test_matting_precedence_and_names(
    tiny_model_dir: Path, rmbg_folder: Path, tmp_path: Path
) -> None:
    assert not has_rmbg(tiny_model_dir)
    assert ICLightEngine.from_dir(tiny_model_dir, device="cpu").matting_name is None

    assert has_rmbg(rmbg_folder)
    with_rmbg = ICLightEngine.from_dir(rmbg_folder, device="cpu")
    assert with_rmbg.matting_name == "rmbg-1.4"

    exported = _export_red_is_subject(tmp_path / "red.pt2")
    configured = ICLightEngine.from_dir(rmbg_folder, device="cpu", matting_model=exported)
    assert configured.matting_name == "exported:red.pt2"

    split = np.zeros((128, 192, 3), dtype=np.uint8)
    split[:, :96] = (255, 0, 0)
    split[:, 96:] = (0, 255, 0)
    by_program = np.asarray(composite_on_gray(Image.fromarray(split), configured.matting))
    assert (by_program[:, :90] == (255, 0, 0)).all()
    assert (by_program[:, 100:] == 127).all()
    by_rmbg = np.asarray(composite_on_gray(Image.fromarray(split), with_rmbg.matting))
    assert not np.array_equal(by_rmbg, by_program)

    # A subject's own alpha wins over either.
    rgba = Image.fromarray(split).convert("RGBA")
    rgba.putalpha(255)
    for engine in (with_rmbg, configured):
        assert composite_on_gray(rgba, engine.matting).tobytes() == rgba.convert("RGB").tobytes()
