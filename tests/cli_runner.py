"""Running the installed `relight-admin` console script as a subprocess, for the CLI tests."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ADMIN = Path(sys.executable).parent / "relight-admin"


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, f"exit {self.code}: {self.stderr}"
        return json.loads(self.stdout)

    def error(self) -> dict[str, Any]:
        """The JSON error of a command that failed cleanly (exit 1, nothing on stdout)."""
        assert self.code == 1, f"exit {self.code}: {self.stdout}"
        assert self.stdout == ""
        error: dict[str, Any] = json.loads(self.stderr)
        return error


def admin_env() -> dict[str, str]:
    """This process's environment without its `RELIGHT_` settings (the test ones stay)."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RELIGHT_") or key.startswith("RELIGHT_TEST_")
    }


async def run_admin(*args: str, env: dict[str, str], cwd: Path) -> Result:
    """Run `relight-admin ARGS…` in `cwd` with exactly `env`; its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        str(ADMIN),
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Result(process.returncode, stdout.decode(), stderr.decode())
