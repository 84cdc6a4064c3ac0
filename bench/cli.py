"""The command line every benchmark script shares: `--smoke`, its smallest run.

`make bench-smoke` (scripts/bench_smoke.py) runs every script of this folder with `--smoke`, so
a script that no longer runs fails there instead of rotting until the next `make bench`. Each
script names its own smallest sizes (seconds, not minutes) here; sizes given on the command line
still win over them.
"""

from __future__ import annotations

import argparse
from typing import Any

SMOKE_FLAG = "--smoke"


def parse_args(parser: argparse.ArgumentParser, **smallest: Any) -> argparse.Namespace:
    """`parser`'s arguments, plus `--smoke`: with it, `smallest` (argument names → values)
    replace the defaults."""
    sizes = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in smallest.items())
    help_text = "the smallest run (seconds), to check that the script still works"
    parser.add_argument(
        SMOKE_FLAG, action="store_true", help=f"{help_text}: {sizes}" if sizes else help_text
    )
    args = parser.parse_args()
    if args.smoke and smallest:
        parser.set_defaults(**smallest)
        args = parser.parse_args()
    return args
