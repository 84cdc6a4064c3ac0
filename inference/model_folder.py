"""Checking an IC-Light model folder without loading it: files, sizes, hashes, tensor shapes.

What `relight-models check` and a node's start-up run. Nothing here imports torch: the
safetensors files are judged by their headers (8 bytes of header length, then a JSON table of
every tensor's name, dtype, shape and byte range), so a 5 GB folder is checked in milliseconds
unless its files are hashed too.

`manifest.json` (written by `relight-models fetch`, or `relight-models manifest` for a folder
made by hand) lists every file with its origin and its sha256; the folder's *model digest*, the
name a node gives its weights on every record, is the sha256 of those bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# The base model's files the engine loads (inference/iclight/weights.py reads this list; it is
# here, in a module without torch, so a node checks its folder before loading anything).
BASE_FILES: tuple[str, ...] = (
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
)
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
VAE_WEIGHTS = "vae/diffusion_pytorch_model.safetensors"
TEXT_ENCODER_WEIGHTS = "text_encoder/model.safetensors"
# IC-Light's offsets and the input channels of their widened `conv_in`.
OFFSETS: dict[str, int] = {
    "iclight_sd15_fc.safetensors": 8,
    "iclight_sd15_fbc.safetensors": 12,
}
RMBG_WEIGHTS = "rmbg/model.safetensors"
LATENT_CHANNELS = 4
HASH_CHUNK = 8 * 1024 * 1024
# Tensor shape problems listed per offsets file before the rest are counted.
MAX_MISFITS = 5
# Folders inside the model folder that are not part of the model (partial downloads).
SKIPPED_DIRS = frozenset({".cache", ".partial"})


@dataclass(frozen=True, slots=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


class HeaderError(ValueError):
    """A file is not a readable safetensors file."""


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors a safetensors file holds (name → dtype, shape), read from its header only.

    Also checks that the file is as long as its header says: a truncated download fails here.
    """
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise HeaderError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, 100 * 1024 * 1024):
            raise HeaderError(f"header length {length} exceeds the file ({size} bytes)")
        try:
            table = json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HeaderError(f"header is not JSON ({exc})") from exc
    if not isinstance(table, dict):
        raise HeaderError("header is not a JSON object")
    tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        try:
            tensors[name] = TensorInfo(str(entry["dtype"]), tuple(int(d) for d in entry["shape"]))
            data_end = max(data_end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise HeaderError(f"tensor {name!r} has a malformed entry") from exc
    if 8 + length + data_end != size:
        raise HeaderError(f"{size} bytes, the header describes {8 + length + data_end}")
    return tensors


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(model_dir: Path) -> Iterator[Path]:
    """Every file of the folder except the manifest and partial downloads, sorted."""
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if relative.parts[0] in SKIPPED_DIRS or relative.as_posix() == MANIFEST:
            continue
        if path.is_file():
            yield path


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The folder's manifest, None when it has none; ValueError when it is unreadable."""
    path = model_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{MANIFEST} is not JSON ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise ValueError(f'{MANIFEST} has no "files" list')
    return manifest


def manifest_bytes(entries: list[dict[str, Any]]) -> bytes:
    """The manifest's exact bytes (sorted, stable): the same files always give the same digest."""
    files = sorted(entries, key=lambda entry: str(entry["local_path"]))
    document = {"version": MANIFEST_VERSION, "files": files}
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def model_digest(model_dir: Path) -> str:
    """The name of the folder's weights: sha256 of manifest.json's bytes; without a manifest,
    of every file's relative path, size and sha256 (sorted), which hashes the whole folder."""
    path = model_dir / MANIFEST
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for file in model_files(model_dir):
        relative = file.relative_to(model_dir).as_posix()
        digest.update(f"{relative}\t{file.stat().st_size}\t{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def check_model_folder(model_dir: Path, *, hashes: bool = True) -> tuple[list[str], list[str]]:
    """`(problems, notes)`: what is wrong with the folder, one line each (empty: nothing), and
    what the check could not do (no manifest).

    With a manifest: every file it lists is present with its size (and, with `hashes`, its
    sha256). Always: the engine's layout, and tensor names and shapes that fit together (the
    UNet's `conv_in`, 8 input channels in the fc offsets and 12 in fbc, the text encoder's width
    against the UNet's cross-attention, the VAE's latent channels).
    """
    if not model_dir.is_dir():
        return [f"{model_dir}: not a folder"], []
    problems: list[str] = []
    notes: list[str] = []
    try:
        manifest = read_manifest(model_dir)
    except ValueError as exc:
        manifest = None
        problems.append(f"{MANIFEST}: {exc}")
    if manifest is None:
        if not problems:
            notes.append(f"no {MANIFEST}: structure checked, not sizes or hashes")
    else:
        problems += _check_against_manifest(model_dir, manifest["files"], hashes=hashes)
    problems += check_structure(model_dir)
    return problems, notes


def _check_against_manifest(
    model_dir: Path, entries: list[dict[str, Any]], *, hashes: bool
) -> list[str]:
    problems = []
    for entry in entries:
        relative = str(entry.get("local_path", ""))
        path = model_dir / relative
        if not relative or not path.is_file():
            problems.append(f"{relative}: missing (listed in {MANIFEST})")
            continue
        size = path.stat().st_size
        if size != entry.get("size"):
            problems.append(f"{relative}: {size} bytes, {MANIFEST} says {entry.get('size')}")
            continue
        if hashes and file_sha256(path) != entry.get("sha256"):
            problems.append(f"{relative}: sha256 differs from {MANIFEST} (corrupted or replaced)")
    return problems


def check_structure(model_dir: Path) -> list[str]:
    """The engine's layout and the shapes it relies on (see `check_model_folder`)."""
    problems = [f"{name}: missing" for name in BASE_FILES if not (model_dir / name).is_file()]
    offsets = [name for name in OFFSETS if (model_dir / name).is_file()]
    if not offsets:
        problems.append(f"{' or '.join(OFFSETS)}: missing (the folder needs one of them)")
    configs: dict[str, dict[str, Any]] = {}
    for name in ("unet/config.json", "vae/config.json", "text_encoder/config.json"):
        if (model_dir / name).is_file():
            try:
                configs[name] = json.loads((model_dir / name).read_bytes())
            except (UnicodeDecodeError, json.JSONDecodeError):
                problems.append(f"{name}: not JSON")
    headers: dict[str, dict[str, TensorInfo]] = {}
    weights = [UNET_WEIGHTS, VAE_WEIGHTS, TEXT_ENCODER_WEIGHTS, *offsets, RMBG_WEIGHTS]
    for name in weights:
        if (model_dir / name).is_file():
            try:
                headers[name] = read_safetensors_header(model_dir / name)
            except HeaderError as exc:
                problems.append(f"{name}: {exc}")
    problems += _check_shapes(headers, configs)
    return problems


def _shape(headers: dict[str, dict[str, TensorInfo]], file: str, tensor: str) -> tuple[int, ...]:
    info = headers.get(file, {}).get(tensor)
    return info.shape if info is not None else ()


def _check_shapes(
    headers: dict[str, dict[str, TensorInfo]], configs: dict[str, dict[str, Any]]
) -> list[str]:
    problems = []
    unet = headers.get(UNET_WEIGHTS)
    conv_in = _shape(headers, UNET_WEIGHTS, "conv_in.weight")
    if unet is not None:
        if len(conv_in) != 4 or conv_in[1] != LATENT_CHANNELS:
            problems.append(
                f"{UNET_WEIGHTS}: conv_in.weight has shape {conv_in or 'none'}, expected "
                f"(C, {LATENT_CHANNELS}, k, k): an SD1.5 UNet"
            )
        in_channels = configs.get("unet/config.json", {}).get("in_channels")
        if in_channels not in (None, LATENT_CHANNELS):
            problems.append(f"unet/config.json: in_channels {in_channels}, expected 4")
        for name, channels in OFFSETS.items():
            if name in headers:
                problems += _check_offsets(name, headers[name], unet, channels)
    width = _shape(headers, TEXT_ENCODER_WEIGHTS, "text_model.embeddings.token_embedding.weight")
    if TEXT_ENCODER_WEIGHTS in headers and len(width) != 2:
        problems.append(
            f"{TEXT_ENCODER_WEIGHTS}: no text_model.embeddings.token_embedding.weight "
            "(a CLIP text encoder under the text_model.* names)"
        )
    cross = configs.get("unet/config.json", {}).get("cross_attention_dim")
    if len(width) == 2 and isinstance(cross, int) and width[1] != cross:
        problems.append(
            f"{TEXT_ENCODER_WEIGHTS}: width {width[1]}, the UNet's cross_attention_dim is {cross}"
        )
    quant = _shape(headers, VAE_WEIGHTS, "quant_conv.weight")
    if VAE_WEIGHTS in headers and (len(quant) != 4 or quant[0] != 2 * LATENT_CHANNELS):
        problems.append(
            f"{VAE_WEIGHTS}: quant_conv.weight has shape {quant or 'none'}, expected "
            f"({2 * LATENT_CHANNELS}, …): a VAE with {LATENT_CHANNELS} latent channels"
        )
    if RMBG_WEIGHTS in headers and not headers[RMBG_WEIGHTS]:
        problems.append(f"{RMBG_WEIGHTS}: holds no tensors")
    return problems


def _check_offsets(
    name: str, offsets: dict[str, TensorInfo], unet: dict[str, TensorInfo], channels: int
) -> list[str]:
    """An offsets file has one tensor per UNet weight, of its shape, with `conv_in` widened."""
    problems = []
    missing = sorted(set(unet) - set(offsets))
    unknown = sorted(set(offsets) - set(unet))
    if missing or unknown:
        problems.append(
            f"{name}: does not fit the UNet: {len(missing)} weights without an offset "
            f"(first: {missing[:1]}), {len(unknown)} unknown offsets (first: {unknown[:1]})"
        )
    misfits = []
    for key in sorted(set(unet) & set(offsets)):
        wanted = unet[key].shape
        if key == "conv_in.weight" and len(wanted) == 4:
            wanted = (wanted[0], channels, *wanted[2:])
        if offsets[key].shape != wanted:
            misfits.append(f"{name}: {key} has shape {offsets[key].shape}, expected {wanted}")
    # Offsets of another UNet misfit everywhere: the first few say enough.
    problems += misfits[:MAX_MISFITS]
    if len(misfits) > MAX_MISFITS:
        problems.append(f"{name}: {len(misfits) - MAX_MISFITS} more tensors of the wrong shape")
    return problems
