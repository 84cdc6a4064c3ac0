"""One query layer: every SQL statement lives in a feature's `repository.py`; services compose
repositories; api routes call services, never a repository. Read from the source (`ast`), so
that the rule stays true as code is added.

The rule, precisely, for every module under `relight/`, `api/` and `worker/`:

(a) outside a `repository.py` (and the few modules allowed below, each with its reason) no
    module builds or runs a query: it imports none of SQLAlchemy's statement and expression
    builders (`select`, `insert`, `update`, `delete`, `text`, `func`, …) nor calls them through
    a `sqlalchemy` module, and calls none of a session's or connection's query methods
    (`execute`, `scalar`, `scalars`, `get`, `add`, `flush`, `refresh`, `connection`, …) on a
    receiver named as one (`session`, `uow.session`, `connection`, `*_session`). Transaction
    control (`begin`, `begin_nested`, `commit`, `rollback`) is the unit of work's and allowed.
(b) nothing under `api/` imports a `repository` module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

SOURCES = ("relight", "api", "worker")

# Modules outside a repository that may touch SQL, and why.
ALLOWED = {
    # The schema itself: server defaults (`func.now()`, `text(...)`) and partial-index
    # conditions are DDL, not queries.
    Path("relight/core/models.py"),
    # Engine and pool setup, and `ping`: the readiness probe's `SELECT 1` on a bare pooled
    # connection (no session, no feature), which must work whatever the schema.
    Path("relight/core/db.py"),
}

# SQLAlchemy's statement and SQL-expression builders.
SQL_BUILDERS = frozenset(
    {
        "select",
        "insert",
        "update",
        "delete",
        "text",
        "func",
        "exists",
        "union",
        "union_all",
        "literal",
        "literal_column",
        "bindparam",
        "cast",
        "extract",
        "case",
        "and_",
        "or_",
        "not_",
        "tuple_",
        "values",
        "column",
        "table",
    }
)
# What a session (or connection) does that reads or writes rows.
QUERY_METHODS = frozenset(
    {
        "execute",
        "scalar",
        "scalars",
        "get",
        "get_one",
        "add",
        "add_all",
        "delete",
        "merge",
        "flush",
        "refresh",
        "stream",
        "stream_scalars",
        "connection",
        "run_sync",
    }
)
SESSION_NAME = re.compile(r"(^|_)(session|connection|conn)$")


def _receiver_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def sql_uses(source: str, path: Path) -> list[str]:
    """`path:line: what` for each place in `source` that builds or runs SQL."""
    tree = ast.parse(source, filename=str(path))
    sqlalchemy_modules: set[str] = set()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlalchemy":
            for alias in node.names:
                if alias.name in SQL_BUILDERS:
                    found.append(f"{path}:{node.lineno}: imports {node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sqlalchemy":
                    sqlalchemy_modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        receiver, method = node.func.value, node.func.attr
        if (
            isinstance(receiver, ast.Name)
            and receiver.id in sqlalchemy_modules
            and method in SQL_BUILDERS
        ):
            found.append(f"{path}:{node.lineno}: calls {receiver.id}.{method}")
        name = _receiver_name(receiver)
        if method in QUERY_METHODS and name is not None and SESSION_NAME.search(name):
            found.append(f"{path}:{node.lineno}: calls {name}.{method}()")
    return found


def repository_imports(source: str, path: Path) -> list[str]:
    """`path:line: module` for each import of a `repository` module in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for module in modules:
            if module.split(".")[-1] == "repository":
                found.append(f"{path}:{node.lineno}: {module}")
    return found


def sources(root: Path, folders: tuple[str, ...] = SOURCES) -> list[Path]:
    return sorted(
        path.relative_to(root) for folder in folders for path in (root / folder).rglob("*.py")
    )


def sql_outside_repositories(root: Path) -> list[str]:
    return [
        use
        for path in sources(root)
        if path.name != "repository.py" and path not in ALLOWED
        for use in sql_uses((root / path).read_text(), path)
    ]


def api_repository_imports(root: Path) -> list[str]:
    return [
        found
        for path in sources(root, ("api",))
        for found in repository_imports((root / path).read_text(), path)
    ]


def test_sql_lives_in_repositories_only() -> None:
    assert len(sources(ROOT)) > 50, "the source folders moved"
    assert sql_outside_repositories(ROOT) == [], (
        "move the query into the feature's repository.py and call it from the service"
    )


def test_api_never_imports_a_repository() -> None:
    assert api_repository_imports(ROOT) == [], (
        "api routes call services (relight.<feature>.service, relight.jobs.queries)"
    )


def test_the_rules_still_find_sql_where_it_lives() -> None:
    # Should the code's idiom change, the rules would silently find nothing anywhere.
    repositories = [path for path in sources(ROOT) if path.name == "repository.py"]
    assert {path.parent.name for path in repositories} >= {
        "jobs",
        "credits",
        "webhooks",
        "tenants",
        "ops",
    }
    for path in repositories:
        assert sql_uses((ROOT / path).read_text(), path), path
    found = sql_uses(
        "from sqlalchemy import select\nimport sqlalchemy as sa\n"
        "async def f(uow, storage, redis):\n"
        "    await uow.session.execute(sa.text('x'))\n"
        "    await storage.delete('k')\n"
        "    await redis.delete('k')\n",
        Path("example.py"),
    )
    assert found == [
        "example.py:1: imports sqlalchemy.select",
        "example.py:4: calls session.execute()",
        "example.py:4: calls sa.text",
    ]
    assert repository_imports(
        "from relight.jobs import repository\nimport relight.credits.repository\n"
        "from relight.jobs.repository import get_job\nfrom relight.jobs import queries\n",
        Path("example.py"),
    ) == [
        "example.py:1: relight.jobs.repository",
        "example.py:2: relight.credits.repository",
        "example.py:3: relight.jobs.repository",
    ]
