"""Run every benchmark script of bench/ at its smallest size (`--smoke`); fail if any fails.

The scripts are found, not listed: every `*.py` of bench/ with a `__main__` block and every
`*.sh` (run with `--smoke` too), so a new benchmark is smoke-tested from the day it lands and
one that stopped working fails here instead of at the next `make bench`. Modules without a
`__main__` block (bench/common.py and the like) are libraries of the scripts. A script that
needs a GPU says so and exits 0 where CUDA is missing.

    .venv/bin/python scripts/bench_smoke.py [--list] [--timeout 300] [NAME ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
MAIN_BLOCK = re.compile(r"^if __name__ == [\"']__main__[\"']:", re.MULTILINE)


def bench_scripts(folder: Path = BENCH) -> list[Path]:
    """The runnable scripts of `folder`, by name: `.py` files with a `__main__` block, and
    `.sh` files."""
    found = [
        path
        for path in folder.iterdir()
        if path.suffix == ".sh"
        or (path.suffix == ".py" and MAIN_BLOCK.search(path.read_text(encoding="utf-8")))
    ]
    return sorted(found)


def command_for(script: Path) -> list[str]:
    runner = ["bash"] if script.suffix == ".sh" else [sys.executable]
    return [*runner, str(script), "--smoke"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="only these scripts (file names)")
    parser.add_argument("--list", action="store_true", help="list the scripts and exit")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per script")
    args = parser.parse_args()
    scripts = bench_scripts()
    if args.names:
        unknown = set(args.names) - {script.name for script in scripts}
        if unknown:
            parser.error(f"not a bench script: {', '.join(sorted(unknown))}")
        scripts = [script for script in scripts if script.name in args.names]
    if args.list:
        print("\n".join(script.name for script in scripts))
        return 0
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    failed: list[str] = []
    for script in scripts:
        started = time.perf_counter()
        try:
            completed = subprocess.run(
                command_for(script),
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=args.timeout,
            )
            ok, output = completed.returncode == 0, completed.stdout + completed.stderr
            outcome = "ok" if ok else f"FAILED (exit {completed.returncode})"
        except subprocess.TimeoutExpired as exc:
            ok, outcome = False, f"FAILED (over {args.timeout:g} s)"
            output = "".join(
                part.decode(errors="replace") if isinstance(part, bytes) else part or ""
                for part in (exc.stdout, exc.stderr)
            )
        print(f"bench-smoke {script.name:<24} {outcome:<22} {time.perf_counter() - started:6.1f} s")
        if not ok:
            failed.append(script.name)
            print("\n".join(output.splitlines()[-40:]), flush=True)
    if failed:
        print(f"bench-smoke: {len(failed)} of {len(scripts)} failed: {', '.join(failed)}")
        return 1
    print(f"bench-smoke: all {len(scripts)} scripts ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
