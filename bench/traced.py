"""Run a console entry point under tracemalloc; each SIGUSR1 writes a snapshot (for `bench/soak.py
--tracemalloc`, to see what grows in a process that does not come back flat).

    python bench/traced.py api.main:main SNAPSHOT_DIR [its arguments...]

The n-th SIGUSR1 writes SNAPSHOT_DIR/n.snapshot (after a full garbage collection, so that only
what is still referenced counts), then SNAPSHOT_DIR/n.done once the file is complete.
"""

from __future__ import annotations

import gc
import importlib
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRAMES = 12


def main() -> None:
    target, snapshots, arguments = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    snapshots.mkdir(parents=True, exist_ok=True)
    module_name, function_name = target.split(":")
    entry_point = getattr(importlib.import_module(module_name), function_name)
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
