"""A GPU node installs only what it runs: `pip install '.[node]'` brings no Postgres driver,
ORM, migrations or queue library, and the node never imports one.

The import tests run the node in a fresh interpreter where those four libraries cannot be
imported (a meta path finder refuses them), as on a machine where they are not installed.
"""

from __future__ import annotations

import base64
import importlib.metadata
import io
import os
import subprocess
import sys
import textwrap
import tomllib
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
from packaging.requirements import Requirement
from PIL import Image

from relight.core.config import Settings
from scripts.stack import BIN, free_port
from tests.conftest import example_bytes
from tests.nodes.processes import wait_until_healthy

ROOT = Path(__file__).resolve().parents[2]
# What only the service runs: the database driver and ORM, the migrations, the queue.
SERVICE_ONLY = {"asyncpg", "sqlalchemy", "alembic", "arq"}

# Installed first in every interpreter below: importing any of SERVICE_ONLY fails.
BLOCK_SERVICE_LIBRARIES = textwrap.dedent(
    f"""
    import importlib.abc
    import sys

    class RefuseServiceLibraries(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {sorted(SERVICE_ONLY)!r}:
                raise ImportError(f"the GPU node imported {{name}}")
            return None

    sys.meta_path.insert(0, RefuseServiceLibraries())
    """
)


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower().replace("_", "-")


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))[
        "project"
    ]
    return project


def _node_requirements() -> list[str]:
    project = _project()
    core = project["dependencies"]
    extras = project["optional-dependencies"]
    assert isinstance(core, list)
    assert isinstance(extras, dict)
    return [*core, *extras["node"]]


def _installed_closure(requirements: list[str]) -> set[str]:
    """The names of every distribution `requirements` pull in, transitively, read from the
    metadata installed here (markers evaluated for this interpreter and the extras asked for)."""
    names: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [
        requirement
        for requirement in map(Requirement, requirements)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""})
    ]
    while pending:
        requirement = pending.pop()
        name = requirement.name.lower().replace("_", "-")
        extras = frozenset(extra.lower() for extra in requirement.extras)
        names.add(name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dependencies = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed on this platform: its name is checked all the same
        for dependency in map(Requirement, dependencies):
            marker = dependency.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in ("", *extras)):
                pending.append(dependency)
    return names


def test_the_core_dependencies_and_the_node_extra_name_no_service_library() -> None:
    named = {_name(r) for r in _node_requirements()}
    assert named.isdisjoint(SERVICE_ONLY)
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)
    # The service still gets them, and the dev install has everything.
    assert SERVICE_ONLY <= {_name(r) for r in extras["service"]}
    assert "relight[service,node]" in extras["dev"]


def test_the_node_extra_pulls_in_no_service_library_transitively() -> None:
    closure = _installed_closure(_node_requirements())
    assert {"torch", "diffusers", "fastapi", "redis"} <= closure
    assert closure.isdisjoint(SERVICE_ONLY)


def test_the_relight_node_entry_point_names_the_node_app() -> None:
    [entry] = importlib.metadata.entry_points(group="console_scripts", name="relight-node")
    assert entry.value == "inference.node.app:main"


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", BLOCK_SERVICE_LIBRARIES + textwrap.dedent(code)]


@pytest.mark.slow  # a Python process of its own, seconds of imports
def test_the_node_imports_without_the_service_libraries() -> None:
    check = """
        import importlib.metadata

        import inference.engines.classic
        import inference.engines.iclight
        import inference.node.app
        import inference.tiny_model
        from inference.node.app import create_node_app, main
        from inference.node.settings import NodeSettings

        [entry] = importlib.metadata.entry_points(group="console_scripts", name="relight-node")
        assert entry.load() is main
        create_node_app(NodeSettings(engine="classic"), node_id="n", url="http://n")
        imported = {module.split(".")[0] for module in sys.modules}
        assert imported.isdisjoint({"asyncpg", "sqlalchemy", "alembic", "arq"}), imported
        try:
            import sqlalchemy  # the refusal works: this must fail
        except ImportError:
            print("refused as expected")
        """
    done = subprocess.run(
        _python(check), cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused as expected"


@pytest.mark.slow
def test_a_node_renders_with_the_service_libraries_unimportable(
    settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The installed `relight-node` script, IC-Light on the tiny model, a heartbeat in Redis,
    and a streamed render: every import it makes on the way, none of them refused."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "RELIGHT_NODE_ENGINE": "iclight",
        "RELIGHT_NODE_MODEL_DIR": str(tiny_model_dir),
        "RELIGHT_NODE_DEVICE": "cpu",
        "RELIGHT_NODE_ID": "node-without-service-libraries",
        "RELIGHT_REDIS_URL": settings.redis_url,
        "RELIGHT_GPU_NAMESPACE": f"relight:test-node-deps:{uuid.uuid4().hex[:8]}",
        "RELIGHT_LOG_FORMAT": "text",
    }
    env.pop("RELIGHT_NODE_REDIS_URL", None)
    # The console script pip wrote, run after the refusal is in place.
    script = f"import runpy; runpy.run_path({str(BIN / 'relight-node')!r}, run_name='__main__')"
    log = tmp_path / "node.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*_python(script), "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_healthy(url, process, log, timeout_s=120)
            payload = {
                "image": base64.b64encode(example_bytes()).decode(),
                "params": {
                    "prompt": "cat, sunset",
                    "width": 256,
                    "height": 256,
                    "highres_scale": 1.0,
                    "steps": 2,
                },
                "seed": 7,
            }
            answer = httpx.post(
                f"{url}/v1/relight",
                json=payload,
                headers={"accept": "application/x-ndjson"},
                timeout=120,
            )
            events = [orjson.loads(line) for line in answer.content.splitlines()]
        finally:
            process.terminate()
            process.wait(timeout=30)
    assert events[0]["event"] == "started"
    assert events[-1]["event"] == "result", events[-1]
    image = Image.open(io.BytesIO(base64.b64decode(events[-1]["images"][0]["data"])))
    assert image.size == (256, 256)
    assert "imported" not in log.read_text()
