"""`relight run IMAGE --prompt ... --out DIR`: submit, show progress on stderr, save the images.

The key and the URL come from `--api-key`/`--base-url` or `RELIGHT_API_KEY`/`RELIGHT_BASE_URL`.
Exit status: 0 done, 1 the request failed or was canceled, 2 usage or API error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from relight_client._client import Relight
from relight_client.errors import RelightError, RequestFailedError
from relight_client.models import RequestStatus

BAR_WIDTH = 30


def render_progress(status: RequestStatus) -> str:
    """One line of the progress bar: `[#####.....]  40% PROCESSING`."""
    fraction = min(max(status.progress or 0.0, 0.0), 1.0)
    if status.status.value == "COMPLETED":
        fraction = 1.0
    filled = round(fraction * BAR_WIDTH)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    detail = status.status.value
    if status.queue_position is not None:
        detail += f" (position {status.queue_position} in queue)"
    return f"[{bar}] {fraction:4.0%} {detail}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relight", description="Relight's command line")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="relight an image and save the result")
    run.add_argument("image", help="a file, or an http(s) URL")
    run.add_argument("--prompt", required=True)
    run.add_argument("--out", default=".", help="folder for the images (default: here)")
    run.add_argument("--background", help="a background image (IC-Light fbc)")
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other parameter, e.g. --param seed=42 --param light_source='Left Light'",
    )
    run.add_argument("--timeout", type=float, default=600)
    run.add_argument("--base-url", default=os.environ.get("RELIGHT_BASE_URL"))
    run.add_argument("--api-key", default=os.environ.get("RELIGHT_API_KEY"))
    return parser


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _run(arguments: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    params = {}
    for item in arguments.param:
        name, _, value = item.partition("=")
        params[name] = _value(value)
    with Relight(arguments.base_url, arguments.api_key) as client:
        request = client.relight(
            arguments.image,
            arguments.prompt,
            background_image=arguments.background,
            **params,
        )
        err.write(f"request {request.id}\n")
        for status in request.stream(timeout=arguments.timeout):
            err.write("\r" + render_progress(status))
            err.flush()
        err.write("\n")
        try:
            paths = request.download(arguments.out)
        except RequestFailedError as error:
            err.write(f"error: {error}\n")
            return 1
    for path in paths:
        out.write(f"{path}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    if not arguments.base_url or not arguments.api_key:
        sys.stderr.write(
            "error: set --base-url and --api-key (RELIGHT_BASE_URL, RELIGHT_API_KEY)\n"
        )
        return 2
    try:
        return _run(arguments, sys.stdout, sys.stderr)
    except RelightError as error:
        sys.stderr.write(f"\nerror: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
