"""`make bench-smoke` finds every benchmark script by itself, and every one takes `--smoke`."""

from __future__ import annotations

import ast
from pathlib import Path

from scripts.bench_smoke import BENCH, bench_scripts


def _calls_parse_args(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(
        isinstance(node, ast.Call) and getattr(node.func, "id", None) == "parse_args"
        for node in ast.walk(tree)
    )


def _has_main_block(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(
        isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body
    )


def test_every_runnable_file_of_bench_is_smoke_tested_and_takes_the_smoke_flag() -> None:
    runnable = {path for path in BENCH.iterdir() if path.suffix == ".sh"}
    runnable |= {path for path in BENCH.glob("*.py") if _has_main_block(path)}
    assert set(bench_scripts()) == runnable
    # The libraries left out are the ones without a __main__ block.
    assert {path.name for path in BENCH.glob("*.py")} - {p.name for p in runnable} >= {
        "__init__.py",
        "common.py",
    }
    for script in runnable:
        if script.suffix == ".py":
            # `bench.cli.parse_args` is what adds --smoke and its sizes.
            assert _calls_parse_args(script), f"{script.name} does not take --smoke"


def test_a_new_script_is_found_without_being_listed(tmp_path: Path) -> None:
    (tmp_path / "library.py").write_text("X = 1\n")
    (tmp_path / "new_bench.py").write_text('if __name__ == "__main__":\n    pass\n')
    (tmp_path / "load.sh").write_text("echo hi\n")
    (tmp_path / "notes.md").write_text("not a script\n")
    assert [path.name for path in bench_scripts(tmp_path)] == ["load.sh", "new_bench.py"]
