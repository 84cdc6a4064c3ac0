"""Run a console entry point under tracemalloc; each SIGUSR1 writes a snapshot (for `bench/soak.py
--tracemalloc`, to see what grows in a process that does not come back flat).

    python bench/traced.py api.main:main SNAPSHOT_DIR [its arguments...]
    python bench/traced.py --smoke     (snapshots a trivial entry point once, then exits)

The n-th SIGUSR1 writes SNAPSHOT_DIR/n.snapshot (after a full garbage collection, so that only
what is still referenced counts), then SNAPSHOT_DIR/n.done once the file is complete.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import signal
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cli import parse_args  # noqa: E402

FRAMES = 12


def signal_self(arguments: list[str]) -> None:
    """The smoke run's entry point: asks for one snapshot, as bench/soak.py does."""
    os.kill(os.getpid(), signal.SIGUSR1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", help="module:function, the entry point to run")
    parser.add_argument("snapshots", nargs="?", type=Path, help="where snapshots are written")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the entry point's arguments")
    args = parse_args(parser)
    if args.smoke:
        with tempfile.TemporaryDirectory() as folder:
            run_traced(signal_self, Path(folder), [])
            if not (Path(folder) / "1.done").exists():
                sys.exit("traced.py --smoke: no snapshot was written")
        print("traced.py --smoke: one snapshot written")
        return
    if args.target is None or args.snapshots is None:
        parser.error("the target (module:function) and the snapshot folder are required")
    module_name, function_name = args.target.split(":")
    entry_point = getattr(importlib.import_module(module_name), function_name)
    run_traced(entry_point, args.snapshots, args.arguments)


def run_traced(
    entry_point: Callable[[list[str]], object], snapshots: Path, arguments: list[str]
) -> None:
    snapshots.mkdir(parents=True, exist_ok=True)
    taken = 0

    def snapshot(signum: int, frame: FrameType | None) -> None:
        nonlocal taken
        taken += 1
        gc.collect()
        tracemalloc.take_snapshot().dump(str(snapshots / f"{taken}.snapshot"))
        (snapshots / f"{taken}.done").touch()

    tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR1, snapshot)
    entry_point(arguments)


if __name__ == "__main__":
    main()
