"""Each benchmark script runs end to end in its `--smoke` mode (the sizes `make bench-smoke`
runs it at) and prints its table, so `make bench` cannot rot. Real processes, Postgres and
Redis; the numbers themselves are not checked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import PG_SERVER, ROOT, TEST_REDIS_URL

pytestmark = pytest.mark.slow


def run_script(name: str, *args: str) -> str:
    env = {**os.environ, "RELIGHT_BENCH_PG": PG_SERVER, "RELIGHT_BENCH_REDIS_URL": TEST_REDIS_URL}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def table_rows(output: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in output.splitlines()
        if line.startswith("| ") and not line.startswith("|:")
    ]


def test_submit_benchmark_prints_the_three_endpoints_and_the_history_variant() -> None:
    assert shutil.which("wrk"), "wrk is not installed: `make test` installs it (make wrk)"
    # --smoke: 1 s per wrk run, 4 connections, 20 requests/s for 0.5 s, 500 jobs of history.
    output = run_script("submit.py", "--smoke")
    rows = [row for row in table_rows(output) if row[0] != "endpoint"]
    history = "submit, 500 jobs in the table"
    closed_loop, open_loop = (
        ["framework floor", "I/O floor", "submit", history],
        ["submit", history],
    )
    assert [row[0] for row in rows] == closed_loop + open_loop
    assert all(row[-1] == "0" for row in rows), "some requests failed"


def test_submit_cpu_benchmark_prints_each_endpoint_against_the_io_floor() -> None:
    output = run_script("submit_cpu.py", "--smoke")  # 20 requests of each, in turns of 10
    rows = [row for row in table_rows(output) if row[0] != "endpoint"]
    assert [row[0] for row in rows] == ["/v2/ic-light", "/bench/io-floor", "/bench/framework-floor"]
    assert rows[1][2] == "1.00"
    assert all(float(row[1]) > 0 for row in rows)
    assert "more than the I/O floor" in output


def test_dispatch_benchmark_runs_jobs_through_a_real_worker() -> None:
    output = run_script("dispatch.py", "--smoke")  # 3 jobs, a burst of 5, 500 of history
    rows = [row for row in table_rows(output) if row[0] != "run"]
    assert [row[0] for row in rows] == ["dispatch", "dispatch, 500 jobs in the table"]
    assert all(float(row[-1]) > 0 for row in rows)


def test_fairness_benchmark_compares_arq_order_with_fair_turns() -> None:
    output = run_script("fairness.py", "--smoke")  # a backlog of 5 jobs of 20 ms, a burst of 5
    rows = [row for row in table_rows(output) if row[0] != "dispatch"]
    assert [row[0] for row in rows] == ["FIFO (before)", "fair turns"]
    assert all(float(row[-1]) > 0 for row in rows)


def test_e2e_benchmark_breaks_a_default_job_down() -> None:
    output = run_script("e2e.py", "--smoke")  # one job
    stages = [row[0] for row in table_rows(output)]
    assert stages[1:] == [
        "submit to completion (client)",
        "queue wait",
        "input fetch + decode",
        "engine",
        "encode",
        "store",
        "bookkeeping (the rest)",
    ]


def test_soak_benchmark_comes_back_flat_with_nothing_lost() -> None:
    output = run_script("soak.py", "--smoke")
    rows = {row[0]: row for row in table_rows(output)}
    for process in ("api", "worker"):
        for measure in ("RSS MiB", "open descriptors"):
            assert rows[f"{process} {measure}"][-1] == "ok"
    kinds = {"submit v2", "submit v1 (sync)", "status stream", "status stream, abandoned"}
    assert kinds <= set(rows), "every kind of the mix is sent in the smallest run"
    assert "errors: 0; lost: 0" in output
