"""The shape of the code, read from the source: which part may import which.

Inside `relight/`, a *package* is the first name under `relight` (`relight.jobs`,
`relight.core`, `relight.cli`: a sub-package or a top-level module). Packages import each
other in one direction only, downwards through these layers (a package may import any package
on a lower line, never one on its own line or above):

    relight.cli, relight.ops     operators' tools: read and change everything
    relight.batches              sets of requests: submit together, end once (a job subscriber)
    relight.webhooks             subscribe to job events (`relight.jobs.subscribers`)
    relight.usage                (beside webhooks) a tenant's usage, read from jobs and ledger
    relight.jobs                 the core feature: submit, run, announce
    relight.nodes                GPU nodes and the `gpu` backend (registry, slots, dispatch)
    relight.backends             where pixels are made: the backend contract, routing
    relight.tenants              who asks: keys, limits, weights, the account
    relight.credits              the ledger of a tenant's credits
    relight.core                 the leaves, in one folder, importing no feature: config,
                                 db, models, errors, params, images, storage, metrics, logs,
                                 ids, text, backoff, unit_of_work, ...

relight.jobs and relight.nodes do not import each other: a job runs on any `RenderBackend`,
and the worker hands it the `gpu` one that relight.nodes builds. When two features need each
other, the lower one announces and the upper one subscribes: a job announces its `start` and
`completed` events, and the webhooks' subscriber writes the delivery rows in the job's own
transaction. Helpers that two features share live in a leaf (`relight.core.backoff`).

Every import counts: at module level, inside functions (a lazy import is still a dependency,
only a later one), and under `if TYPE_CHECKING:` (a type-only import still makes one package's
code read in the other's terms, and a cycle hidden there comes back as soon as someone needs
the name at run time). `tests/inference/test_node_dependencies.py` runs the GPU node with the
service libraries unimportable (what it imports at start-up and on one render); the last test
here adds every code path of the node, read statically.
"""

from __future__ import annotations

import ast
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Highest first; packages on the same line may not import each other either.
LAYERS: list[set[str]] = [
    {"relight.cli", "relight.ops"},
    {"relight.batches"},
    {"relight.webhooks", "relight.usage"},
    {"relight.jobs"},
    {"relight.nodes"},
    {"relight.backends"},
    {"relight.tenants"},
    {"relight.credits"},
    {"relight.core"},
]
# Web frameworks and the queue library belong to api/ and worker/, never to the shared core.
NOT_IN_CORE = {"fastapi", "starlette", "arq"}
# What a GPU node does not install (tests/inference/test_node_dependencies.py).
SERVICE_ONLY = {"asyncpg", "sqlalchemy", "alembic", "arq"}


@dataclass(frozen=True)
class Import:
    """`importer` (a module) imports `imported` (a module, or a name in one) at `line`."""

    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported} (line {self.line})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports_of(path: Path) -> Iterator[Import]:
    """Every import in the file, wherever it stands (functions and `if TYPE_CHECKING:` too),
    with relative imports made absolute and `from package import module` naming the module."""
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(importer, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                yield Import(importer, f"{source}.{alias.name}", node.lineno)


def imports_under(*folders: str) -> list[Import]:
    return [
        found
        for folder in folders
        for path in sorted((ROOT / folder).rglob("*.py"))
        for found in _imports_of(path)
    ]


def top(name: str, depth: int) -> str:
    return ".".join(name.split(".")[:depth])


def package_graph() -> dict[str, dict[str, list[Import]]]:
    """Package → the packages it imports → the imports that make that edge."""
    graph: dict[str, dict[str, list[Import]]] = {}
    for found in imports_under("relight"):
        source, target = top(found.importer, 2), top(found.imported, 2)
        graph.setdefault(source, {})
        if target.startswith("relight.") and target != source:
            graph[source].setdefault(target, []).append(found)
    return graph


def cycles(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """One shortest cycle through each package that is on any, without repeats."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for start in sorted(graph):
        # Breadth first from `start`: the first path back to it is a shortest cycle.
        paths = deque([[start]])
        visited = {start}
        while paths:
            path = paths.popleft()
            targets = sorted(graph.get(path[-1], {}))
            if start in targets:
                if frozenset(path) not in seen:
                    seen.add(frozenset(path))
                    found.append([*path, start])
                break
            for target in targets:
                if target not in visited:
                    visited.add(target)
                    paths.append([*path, target])
    return found


def describe(cycle: list[str], graph: dict[str, dict[str, list[Import]]]) -> str:
    steps = [
        f"  {source} → {target}: {graph[source][target][0]}"
        for source, target in itertools.pairwise(cycle)
    ]
    return " → ".join(cycle) + "\n" + "\n".join(steps)


def test_relight_packages_import_each_other_without_cycles() -> None:
    graph = package_graph()
    found = cycles(graph)
    assert not found, "import cycles between packages of relight/:\n" + "\n".join(
        describe(cycle, graph) for cycle in found
    )


def test_feature_packages_import_only_the_layers_below() -> None:
    graph = package_graph()
    rank = {
        package: len(LAYERS) - position
        for position, layer in enumerate(LAYERS)
        for package in layer
    }
    assert set(rank) <= set(graph), "a layer names a package that is not there"
    upward = [
        f"{edge} goes from layer {rank.get(package, 0)} up to {rank.get(target, 0)}"
        for package, targets in sorted(graph.items())
        for target, edges in sorted(targets.items())
        if rank.get(target, 0) >= rank.get(package, 0) and (target in rank or package in rank)
        for edge in edges
    ]
    assert not upward, "imports against the layering of relight/:\n" + "\n".join(upward)


def test_relight_imports_no_web_framework_or_queue_library() -> None:
    found = [str(i) for i in imports_under("relight") if top(i.imported, 1) in NOT_IN_CORE]
    assert not found, "\n".join(found)


def test_api_worker_and_inference_keep_to_their_side() -> None:
    walls = {"api": {"worker"}, "worker": {"api"}, "inference": {"api", "worker"}}
    found = [
        str(i)
        for folder, forbidden in walls.items()
        for i in imports_under(folder)
        if top(i.imported, 1) in forbidden
    ]
    assert not found, "\n".join(found)


def _relight_modules() -> dict[str, list[Import]]:
    return {module_name(path): list(_imports_of(path)) for path in (ROOT / "relight").rglob("*.py")}


def test_the_gpu_node_reaches_no_relight_module_that_needs_a_service_library() -> None:
    """From `inference/node/`, follow every import into relight/ (function bodies included):
    none of the modules reached may import SQLAlchemy, asyncpg, alembic or arq."""
    relight = _relight_modules()

    def module_of(imported: str) -> str | None:
        # `from relight.x import name`: the module is relight.x unless relight.x.name is one.
        for candidate in (imported, imported.rpartition(".")[0]):
            if candidate in relight:
                return candidate
        return None

    chains: dict[str, list[Import]] = {}
    pending: deque[tuple[str, list[Import]]] = deque()
    for found in imports_under("inference/node"):
        module = module_of(found.imported)
        if module is not None and module not in chains:
            chains[module] = [found]
            pending.append((module, [found]))
    while pending:
        module, chain = pending.popleft()
        for found in relight[module]:
            target = module_of(found.imported)
            if target is not None and target not in chains:
                chains[target] = [*chain, found]
                pending.append((target, [*chain, found]))
    assert "relight.core.params" in chains  # the walk follows the node's imports into relight/
    # Per module reached, its first import of a service library and how the node got there.
    offending = [
        " ← ".join(str(step) for step in reversed([*chain, service_imports[0]]))
        for module, chain in sorted(chains.items())
        if (
            service_imports := [
                found for found in relight[module] if top(found.imported, 1) in SERVICE_ONLY
            ]
        )
    ]
    assert not offending, "\n".join(offending)


def test_every_package_of_relight_has_its_layer() -> None:
    # A new module straight under relight/ would be a leaf nobody placed: it belongs in
    # relight/core/ (a leaf) or in a feature package.
    placed = {package for layer in LAYERS for package in layer}
    present = {
        f"relight.{path.stem}"
        for path in (ROOT / "relight").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()
    }
    unplaced = sorted(present - placed)
    assert not unplaced, f"packages of relight/ outside every layer: {unplaced}"
