"""`relight-models` against a stand-in hub on 127.0.0.1 serving the tiny model's files as the
real repositories' files: fetch writes a manifest that matches them, an interrupted fetch
resumes where it stopped, and `check` catches a corrupted file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from inference import model_folder
from inference.iclight.weights import Variant
from inference.model_folder import MANIFEST, check_model_folder, model_digest
from inference.models_cli import ICLIGHT_REPO, RMBG_REPO, SD15_REPO
from inference.tiny_model import write_tiny_model
from tests.fakes.hf_hub import FakeHub

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def tiny_both(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(
        tmp_path_factory.mktemp("hub-source") / "model", variants=(Variant.FC, Variant.FBC)
    )


@pytest.fixture
def hub(tiny_both: Path, tmp_path: Path) -> Iterator[FakeHub]:
    """The three repositories the reference demo downloads from, holding tiny files."""
    base = {name: (tiny_both / name).read_bytes() for name in model_folder.BASE_FILES}
    base["model_index.json"] = (tiny_both / "model_index.json").read_bytes()
    offsets = {name: (tiny_both / name).read_bytes() for name in model_folder.OFFSETS}
    rmbg = tmp_path / "rmbg.safetensors"
    safetensors.numpy.save_file({"conv.weight": np.ones((4, 3, 3, 3), np.float32)}, str(rmbg))
    repos = {
        SD15_REPO: base,
        ICLIGHT_REPO: offsets,
        RMBG_REPO: {"model.safetensors": rmbg.read_bytes(), "config.json": b"{}"},
    }
    with FakeHub(repos) as server:
        yield server


def relight_models(*args: str, hub: FakeHub | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "5"}
    env.pop("HF_TOKEN", None)
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    return subprocess.run(
        [sys.executable, "-m", "inference.models_cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def resolve_path(hub: FakeHub, repo: str, path: str) -> str:
    return f"/{repo}/resolve/{hub.commits[repo]}/{path}"


def test_the_checked_layout_is_the_engines() -> None:
    assert model_folder.OFFSETS == {v.offsets_file: v.in_channels for v in Variant}


def test_fetch_writes_a_manifest_that_matches_the_files(hub: FakeHub, tmp_path: Path) -> None:
    folder = tmp_path / "models"

    fetched = relight_models("fetch", str(folder), "--fc", "--fbc", "--rmbg", hub=hub)

    assert fetched.returncode == 0, fetched.stderr
    manifest = json.loads((folder / MANIFEST).read_bytes())
    entries = {entry["local_path"]: entry for entry in manifest["files"]}
    served = {
        (repo, path): data for repo, files in hub.repos.items() for path, data in files.items()
    }
    assert set(entries) == {
        *model_folder.BASE_FILES,
        "model_index.json",
        *model_folder.OFFSETS,
        "rmbg/model.safetensors",
    }
    for local_path, entry in entries.items():
        data = served[(entry["repo"], entry["path"])]
        assert entry["revision"] == hub.commits[entry["repo"]]
        assert (folder / local_path).read_bytes() == data
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entries["rmbg/model.safetensors"]["repo"] == RMBG_REPO
    assert not list((folder / ".partial").rglob("*.part"))
    digest = hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
    assert f"model digest {digest}" in fetched.stdout
    checked = relight_models("check", str(folder))
    assert checked.returncode == 0, checked.stdout
    assert digest in checked.stdout


def test_fetch_without_flags_takes_the_fc_model(hub: FakeHub, tmp_path: Path) -> None:
    folder = tmp_path / "models"

    assert relight_models("fetch", str(folder), hub=hub).returncode == 0

    assert (folder / "iclight_sd15_fc.safetensors").is_file()
    assert not (folder / "iclight_sd15_fbc.safetensors").exists()
    assert not (folder / "rmbg").exists()


def test_a_fetch_cut_mid_file_resumes_on_the_next_run(hub: FakeHub, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    path = resolve_path(hub, SD15_REPO, UNET)
    data = hub.repos[SD15_REPO][UNET]
    half = len(data) // 2
    hub.cut(path, after=half)

    interrupted = relight_models("fetch", str(folder), hub=hub)

    assert interrupted.returncode == 1
    assert "run the same command again to resume" in interrupted.stderr
    assert not (folder / UNET).exists()
    [partial] = (folder / ".partial").rglob("diffusion_pytorch_model.safetensors.*.part")
    assert partial.stat().st_size == half
    assert not (folder / MANIFEST).exists()

    hub.heal()
    resumed = relight_models("fetch", str(folder), hub=hub)

    assert resumed.returncode == 0, resumed.stderr
    # The rerun asked for the rest only, and the bytes are whole.
    assert hub.ranges(path)[0] is None
    assert hub.ranges(path)[-1] == f"bytes={half}-"
    assert (folder / UNET).read_bytes() == data
    assert not partial.exists()
    assert relight_models("check", str(folder)).returncode == 0


def test_check_names_a_corrupted_file_and_fails(hub: FakeHub, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    assert relight_models("fetch", str(folder), hub=hub).returncode == 0
    text_encoder = folder / "text_encoder/model.safetensors"
    damaged = bytearray(text_encoder.read_bytes())
    damaged[-10] ^= 0x01  # a weight's byte: the header (and the size) stay valid
    text_encoder.write_bytes(bytes(damaged))

    checked = relight_models("check", str(folder))

    assert checked.returncode == 1
    assert checked.stdout.splitlines() == [
        "text_encoder/model.safetensors: sha256 differs from manifest.json (corrupted or replaced)"
    ]
    # Sizes and structure alone (what a node checks at start) do not see a flipped byte.
    assert relight_models("check", str(folder), "--no-hashes").returncode == 0


def test_a_truncated_file_is_caught_without_hashing(tmp_path: Path, tiny_both: Path) -> None:
    folder = shutil.copytree(tiny_both, tmp_path / "model")
    unet = folder / UNET
    unet.write_bytes(unet.read_bytes()[:-100])

    problems, notes = check_model_folder(folder, hashes=False)

    assert notes == ["no manifest.json: structure checked, not sizes or hashes"]
    assert len(problems) == 1
    assert problems[0].startswith(f"{UNET}: ")


def test_a_folder_without_a_manifest_is_checked_for_structure(
    tmp_path: Path, tiny_both: Path
) -> None:
    folder = shutil.copytree(tiny_both, tmp_path / "model")
    assert check_model_folder(folder) == (
        [],
        [f"no {MANIFEST}: structure checked, not sizes or hashes"],
    )
    # The fbc offsets under the fc name: conv_in has 12 input channels, not 8.
    shutil.copy(folder / "iclight_sd15_fbc.safetensors", folder / "iclight_sd15_fc.safetensors")
    (folder / "tokenizer/merges.txt").unlink()

    problems, _ = check_model_folder(folder)

    conv_in = [p for p in problems if "conv_in.weight" in p]
    assert problems[0] == "tokenizer/merges.txt: missing"
    assert len(conv_in) == 1
    assert conv_in[0].startswith("iclight_sd15_fc.safetensors: conv_in.weight has shape (8, 12")


def test_the_digest_of_a_folder_without_a_manifest_follows_its_files(
    tmp_path: Path, tiny_both: Path
) -> None:
    folder = shutil.copytree(tiny_both, tmp_path / "model")
    before = model_digest(folder)
    assert model_digest(folder) == before
    (folder / "model_index.json").write_text("{}")
    assert model_digest(folder) != before
    written = relight_models("manifest", str(folder))
    assert written.returncode == 0, written.stderr
    assert model_digest(folder) == hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
    assert relight_models("check", str(folder)).returncode == 0
