"""A job's status has one home: only `relight/jobs/lifecycle.py` (through the guarded queries
of `relight/jobs/repository.py`) writes it. Read from the source, so that the rule stays true
when someone adds a transition: a new one belongs in the lifecycle module, as a function.

Creating a job (`Job(status=queued)` in the submit) is an insert, not a change of status.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT

HOMES = {Path("relight/jobs/lifecycle.py"), Path("relight/jobs/repository.py")}
SOURCES = ("relight", "api", "worker")

# The ways our code writes a job's status: an UPDATE of the job table (SQLAlchemy or SQL), a
# `status` in a values dict or keyword, or an assignment to a loaded row's attribute.
STATUS_WRITES = [
    re.compile(r"\bupdate\(\s*(Job\b|_JOB_TABLE\b)"),
    re.compile(r"\bupdate\s+job\s+set\b", re.IGNORECASE),
    re.compile(r"""["']status["']\s*:\s*JobStatus\."""),
    re.compile(r"\bJob\.status\s*:"),
    re.compile(r"\.values\(\s*status\s*="),
    re.compile(r"\bjob\w*\.status\s*=(?!=)"),
]


def status_writes(path: Path) -> list[str]:
    """`path:line: text` of every line of `path` that writes a job's status."""
    found = []
    for number, line in enumerate((ROOT / path).read_text().splitlines(), start=1):
        if any(pattern.search(line) for pattern in STATUS_WRITES):
            found.append(f"{path}:{number}: {line.strip()}")
    return found


def test_only_the_lifecycle_module_and_its_queries_write_a_jobs_status() -> None:
    sources = sorted(
        path.relative_to(ROOT) for folder in SOURCES for path in (ROOT / folder).rglob("*.py")
    )
    assert len(sources) > 50, "the source folders moved"

    elsewhere = [line for path in sources if path not in HOMES for line in status_writes(path)]

    assert elsewhere == [], "a job's status changes in relight/jobs/lifecycle.py only"


def test_the_patterns_still_find_the_writes_in_their_home() -> None:
    # Should the code's idiom change, these patterns would silently find nothing anywhere.
    lifecycle = status_writes(Path("relight/jobs/lifecycle.py"))
    repository = status_writes(Path("relight/jobs/repository.py"))

    for status in ("SUCCEEDED", "QUEUED", "FAILED", "CANCELED"):
        assert any(f"JobStatus.{status}.value" in line for line in lifecycle), status
    assert any("JobStatus.RUNNING.value" in line for line in repository)  # the claim
    assert any("update(Job)" in line for line in repository)  # the guarded UPDATE
