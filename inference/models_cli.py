"""`relight-models`: fill an IC-Light model folder from the Hugging Face Hub, and check one.

    relight-models fetch DIR [--fc] [--fbc] [--rmbg]   download (resumable), write manifest.json
    relight-models check DIR [--no-hashes]             files, sizes, sha256s, tensor shapes
    relight-models manifest DIR                        a manifest for a folder made by hand

`fetch` takes what lllyasviel/IC-Light's demo uses: the SD1.5 base (realistic-vision-v51, only
the files the engine loads), the IC-Light offsets, and BRIA's RMBG-1.4 (into DIR/rmbg/). With
no flag it takes `--fc` (the base and the fc offsets: the smallest folder a node serves). Each
repository's revision is resolved to a commit once and every file is fetched at that commit;
a file downloads into DIR/.partial/ and moves into place once its size and hash are right, so
an interrupted fetch, run again, goes on from the bytes it has (an HTTP range request).
`HF_ENDPOINT` names another hub, `HF_TOKEN` a token (RMBG-1.4 may ask to accept its license).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.model_folder import (
    BASE_FILES,
    MANIFEST,
    OFFSETS,
    RMBG_WEIGHTS,
    check_model_folder,
    file_sha256,
    manifest_bytes,
    model_digest,
    model_files,
    read_manifest,
)

SD15_REPO = "stablediffusionapi/realistic-vision-v51"
ICLIGHT_REPO = "lllyasviel/ic-light"
RMBG_REPO = "briaai/RMBG-1.4"
PARTIAL_DIR = ".partial"
FC_OFFSETS, FBC_OFFSETS = OFFSETS
# Reconnections within one run after a connection broke mid-file (each must bring bytes).
TRANSIENT_RETRIES = 3


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One file to fetch: where it is in its repository, and where it goes in the folder."""

    repo: str
    path: str
    local_path: str


class FetchFailed(RuntimeError):
    """A file could not be fetched, or arrived with the wrong size or hash."""


def plan(*, fc: bool, fbc: bool, rmbg: bool) -> list[RemoteFile]:
    """The files of the chosen parts (the SD1.5 base always, with either offsets)."""
    files = [RemoteFile(SD15_REPO, name, name) for name in (*BASE_FILES, "model_index.json")]
    if fc:
        files.append(RemoteFile(ICLIGHT_REPO, FC_OFFSETS, FC_OFFSETS))
    if fbc:
        files.append(RemoteFile(ICLIGHT_REPO, FBC_OFFSETS, FBC_OFFSETS))
    if rmbg:
        files.append(RemoteFile(RMBG_REPO, "model.safetensors", RMBG_WEIGHTS))
    return files


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _matches_etag(path: Path, sha256: str, etag: str | None) -> bool:
    """The hub's ETag is the sha256 of an LFS file and the git blob sha1 of a small one; any
    other ETag cannot be checked here (the size still is)."""
    if etag is None:
        return True
    tag = etag.lower()
    if len(tag) == 64 and all(c in "0123456789abcdef" for c in tag):
        return tag == sha256
    if len(tag) == 40 and all(c in "0123456789abcdef" for c in tag):
        return tag == _git_blob_sha1(path)
    return True


def resolve_revision(repo: str, revision: str, *, endpoint: str | None, token: str | None) -> str:
    """The commit `revision` (a branch, tag or sha) names now."""
    from huggingface_hub import HfApi

    sha = HfApi(endpoint=endpoint, token=token).model_info(repo, revision=revision).sha
    if not sha:
        raise FetchFailed(f"{repo}@{revision}: the hub named no commit")
    return sha


def fetch_file(
    remote: RemoteFile, commit: str, model_dir: Path, *, endpoint: str | None, token: str | None
) -> dict[str, Any]:
    """Download one file at `commit` (resuming a partial one), check it, and return its
    manifest entry. A file already in place with the right size and hash is kept."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils._headers import build_hf_headers

    url = hf_hub_url(remote.repo, remote.path, revision=commit, endpoint=endpoint)
    metadata = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    size, etag = metadata.size, metadata.etag
    target = model_dir / remote.local_path
    entry = {"repo": remote.repo, "revision": commit, "path": remote.path}
    if target.is_file() and (size is None or target.stat().st_size == size):
        sha256 = file_sha256(target)
        if _matches_etag(target, sha256, etag):
            return _entry(entry, remote, target, sha256)
    # Named by the ETag, so a file that changed upstream never continues an older download.
    tag = (etag or "unknown").replace("/", "_")[:16]
    partial = model_dir / PARTIAL_DIR / f"{remote.local_path}.{tag}.part"
    partial.parent.mkdir(parents=True, exist_ok=True)
    if partial.is_file() and size is not None and partial.stat().st_size > size:
        partial.unlink()
    # Past a redirect (LFS files live on a CDN), unless the file is Xet-backed: then the
    # resolve URL itself redirects to a plain download.
    source = metadata.location if metadata.xet_file_data is None else url
    _download(
        source, partial, size=size, headers=build_hf_headers(token=token), label=remote.local_path
    )
    sha256 = file_sha256(partial)
    if not _matches_etag(partial, sha256, etag):
        partial.unlink()
        raise FetchFailed(f"{remote.repo}/{remote.path}: the bytes do not match the hub's ETag")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, target)
    return _entry(entry, remote, target, sha256)


def _download(
    url: str, partial: Path, *, size: int | None, headers: dict[str, str], label: str
) -> None:
    """Append the rest of the file to `partial` (a range request from its length), writing each
    chunk as it arrives so a cut connection keeps what came; a cut that brought bytes is
    resumed at once (`TRANSIENT_RETRIES` tries in a row that bring nothing end the run). A
    refusal (4xx/5xx) raises."""
    import httpx2
    from huggingface_hub import constants, get_session, hf_raise_for_status
    from huggingface_hub.utils.tqdm import tqdm

    retries = TRANSIENT_RETRIES
    while True:
        have = partial.stat().st_size if partial.is_file() else 0
        if size is not None and have == size:
            return
        request_headers = {**headers, "Accept-Encoding": "identity"}
        if have:
            request_headers["Range"] = f"bytes={have}-"
        try:
            with get_session().stream(
                "GET", url, headers=request_headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
            ) as response:
                hf_raise_for_status(response)
                if have and response.status_code != 206:
                    have = 0  # the server ignored the range: the whole file comes again
                with (
                    partial.open("ab" if have else "wb") as file,
                    # The hub's progress bar (HF_HUB_DISABLE_PROGRESS_BARS turns it off).
                    tqdm(  # type: ignore[no-untyped-call]
                        total=size, initial=have, unit="B", unit_scale=True, desc=label
                    ) as progress,
                ):
                    for chunk in response.iter_bytes():
                        file.write(chunk)
                        progress.update(len(chunk))
        except (httpx2.TransportError, httpx2.StreamError):
            got = partial.stat().st_size if partial.is_file() else 0
            retries = TRANSIENT_RETRIES if got > have else retries - 1
            if retries < 0:
                raise
            continue
        got = partial.stat().st_size
        if size is not None and got != size:
            raise FetchFailed(f"{label}: {got} bytes arrived, the hub said {size}")
        return


def _entry(base: dict[str, Any], remote: RemoteFile, path: Path, sha256: str) -> dict[str, Any]:
    return {
        **base,
        "local_path": remote.local_path,
        "size": path.stat().st_size,
        "sha256": sha256,
    }


def fetch(
    model_dir: Path,
    files: Sequence[RemoteFile],
    *,
    revision: str = "main",
    endpoint: str | None = None,
    token: str | None = None,
) -> Path:
    """Fetch `files` into `model_dir` and write its manifest (earlier entries of files fetched
    before and still present are kept); returns the manifest's path."""
    model_dir.mkdir(parents=True, exist_ok=True)
    commits = {
        repo: resolve_revision(repo, revision, endpoint=endpoint, token=token)
        for repo in dict.fromkeys(remote.repo for remote in files)
    }
    entries: dict[str, dict[str, Any]] = {}
    try:
        earlier = read_manifest(model_dir)
    except ValueError:
        earlier = None
    for entry in earlier["files"] if earlier is not None else []:
        if (model_dir / str(entry.get("local_path", ""))).is_file():
            entries[str(entry["local_path"])] = entry
    for remote in files:
        entries[remote.local_path] = fetch_file(
            remote, commits[remote.repo], model_dir, endpoint=endpoint, token=token
        )
    manifest = model_dir / MANIFEST
    manifest.write_bytes(manifest_bytes(list(entries.values())))
    return manifest


def write_local_manifest(model_dir: Path) -> Path:
    """A manifest for a folder not fetched by `fetch` (no repository, no revision)."""
    entries = []
    for path in model_files(model_dir):
        relative = path.relative_to(model_dir).as_posix()
        entries.append(
            {
                "repo": None,
                "revision": None,
                "path": relative,
                "local_path": relative,
                "size": path.stat().st_size,
                "sha256": file_sha256(path),
            }
        )
    manifest = model_dir / MANIFEST
    manifest.write_bytes(manifest_bytes(entries))
    return manifest


def _say(line: str, *, error: bool = False) -> None:
    stream = sys.stderr if error else sys.stdout
    stream.write(line + "\n")
    stream.flush()


def _fetch_command(args: argparse.Namespace) -> int:
    fc = args.fc or not (args.fc or args.fbc or args.rmbg)
    files = plan(fc=fc, fbc=args.fbc, rmbg=args.rmbg)
    token = os.environ.get("HF_TOKEN") or None
    try:
        manifest = fetch(args.directory, files, revision=args.revision, token=token)
    except Exception as exc:  # the hub's errors are many; each is one line for the operator
        _say(f"fetch failed: {exc}", error=True)
        _say("run the same command again to resume", error=True)
        return 1
    _say(f"wrote {manifest} ({len(files)} files fetched)")
    _say(f"model digest {model_digest(args.directory)}")
    return 0


def _check_command(args: argparse.Namespace) -> int:
    problems, notes = check_model_folder(args.directory, hashes=not args.no_hashes)
    for note in notes:
        _say(f"note: {note}")
    for problem in problems:
        _say(problem)
    if problems:
        _say(f"{args.directory}: {len(problems)} problem(s)", error=True)
        return 1
    _say(f"ok: {args.directory} (model digest {model_digest(args.directory)})")
    return 0


def _manifest_command(args: argparse.Namespace) -> int:
    manifest = write_local_manifest(args.directory)
    _say(f"wrote {manifest}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relight-models", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="download the model folder from the hub")
    fetch_parser.add_argument("directory", type=Path)
    fetch_parser.add_argument("--fc", action="store_true", help="IC-Light fc (the default)")
    fetch_parser.add_argument("--fbc", action="store_true", help="IC-Light fbc (backgrounds)")
    fetch_parser.add_argument("--rmbg", action="store_true", help="BRIA RMBG-1.4, into rmbg/")
    fetch_parser.add_argument(
        "--revision", default="main", help="branch or tag of every repository (default main)"
    )
    fetch_parser.set_defaults(run=_fetch_command)
    check_parser = commands.add_parser("check", help="verify a model folder")
    check_parser.add_argument("directory", type=Path)
    check_parser.add_argument(
        "--no-hashes", action="store_true", help="sizes and structure only (fast)"
    )
    check_parser.set_defaults(run=_check_command)
    manifest_parser = commands.add_parser("manifest", help="write manifest.json for a folder")
    manifest_parser.add_argument("directory", type=Path)
    manifest_parser.set_defaults(run=_manifest_command)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
