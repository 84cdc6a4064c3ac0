"""`pip install ./clients/python` into a fresh virtualenv, then the README's example, as a new
user runs it, against a live api + worker (what `make demo` starts)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.conftest import Account

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "python"


def readme_example() -> str:
    """The first Python block of the README's "Python client" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Python client\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    return match.group(1)


def test_the_package_readme_shows_the_same_example() -> None:
    assert readme_example() in (PACKAGE / "README.md").read_text()


def test_pip_install_into_a_fresh_venv_then_the_readme_example_runs(
    base_url: str, account: Account, tmp_path: Path
) -> None:
    # A copy, so the build leaves no build/ or egg-info in the checkout.
    source = tmp_path / "python"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         str(source)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    work = tmp_path / "work"
    (work / "examples").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "astronaut.png", work / "examples")
    (work / "example.py").write_text(readme_example())
    # Only the venv: neither the checkout nor the project's .venv is on the path.
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "RELIGHT_BASE_URL": base_url,
        "RELIGHT_API_KEY": account.key,
    }

    ran = subprocess.run(
        [str(python), "-I", "example.py"], cwd=work, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    where = subprocess.run(
        [str(python), "-I", "-c", "import relight_client; print(relight_client.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip

    assert ran.returncode == 0, ran.stderr
    assert where.stdout.startswith(str(venv))
    assert "\nCOMPLETED " in ran.stdout
    saved = sorted((work / "relit").iterdir())
    assert len(saved) == 1
    assert saved[0].suffix == ".webp"
    assert f"saved relit/{saved[0].name}" in ran.stdout
    assert re.search(r"credits left: \d+", ran.stdout)
    assert os.path.getsize(saved[0]) > 0
