"""The package's shape: one import name, the pipeline's direction, no import cycles.

Read from the source's own import statements (module level and inside functions alike: an import
deferred into a function to dodge a cycle is still a cycle)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PARTS = ["database", "text", "ingest", "queries", "plugins", "runner", "embeddings"]


def package_modules() -> dict[str, Path]:
    """spellbook module name -> file, for every module the package installs."""
    modules = {}
    for file in sorted(REPO.glob("*.py")):
        modules["spellbook" if file.stem == "__init__" else f"spellbook.{file.stem}"] = file
    for part in PARTS:
        for file in sorted((REPO / part).rglob("*.py")) if (REPO / part).is_dir() else []:
            parts = file.relative_to(REPO).with_suffix("").parts
            name = ".".join(("spellbook",) + (parts[:-1] if parts[-1] == "__init__" else parts))
            modules[name] = file
    return modules


MODULES = package_modules()


def imports_of(name: str, file: Path) -> set[str]:
    """Every module name file imports (absolute), including `from a import b` where b is a module."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return found


GRAPH = {name: {target for target in imports_of(name, file) if target in MODULES and target != name} for name, file in MODULES.items()}
ALL_IMPORTS = {name: imports_of(name, file) for name, file in MODULES.items()}


def test_the_parts_are_there():
    assert {"spellbook", "spellbook.cli", "spellbook.site", "spellbook.database.schema", "spellbook.ingest.load",
            "spellbook.ingest.readers", "spellbook.ingest.readers.common", "spellbook.queries.search",
            "spellbook.text.fold", "spellbook.plugins", "spellbook.runner"} <= set(MODULES)


def test_no_import_cycles():
    """Tarjan's strongly connected components over the import graph: each must be one module."""
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert cycles == []


def test_nothing_imports_the_old_top_level_names():
    for name, imported in ALL_IMPORTS.items():
        top = {module.split(".")[0] for module in imported}
        assert not top & {"ingest", "plugins", "runner", "queries", "database", "text"}, name


def _parts_imported(prefix: str) -> dict[str, set[str]]:
    return {name: imported for name, imported in ALL_IMPORTS.items() if name == prefix or name.startswith(prefix + ".")}


@pytest.mark.parametrize(
    "part, forbidden",
    [
        ("spellbook.queries", ("spellbook.ingest", "spellbook.plugins", "datasette")),  # the read side never imports the writer
        ("spellbook.plugins", ("spellbook.ingest",)),  # the web never parses source files or writes
        ("spellbook.text", ("spellbook.database", "spellbook.ingest", "spellbook.queries", "spellbook.plugins", "datasette")),
        ("spellbook.database", ("spellbook.ingest", "spellbook.queries", "spellbook.plugins", "datasette")),
        ("spellbook.ingest.readers", ("spellbook.database", "sqlite3", "sqlite_utils", "spellbook.ingest.load")),  # readers know nothing of SQLite
        ("spellbook.runner", ("datasette", "spellbook.plugins")),
        ("spellbook.embeddings", ("datasette", "spellbook.plugins")),
    ],
)
def test_the_pipeline_runs_one_way(part, forbidden):
    for name, imported in _parts_imported(part).items():
        bad = {module for module in imported if module.startswith(forbidden)}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_readers_share_helpers_not_the_registry():
    """Each reader imports the shared helpers, never the registry that imports it."""
    readers = {name for name in MODULES if name.startswith("spellbook.ingest.readers.")}
    for name in readers:
        assert "spellbook.ingest.readers" not in GRAPH[name], name
