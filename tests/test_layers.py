"""Layers import downward only: nothing in ``pipeline`` imports ``data_prep``, and the project's
modules import one another without a cycle.

The graph is read statically from the source files (every ``import`` statement, at module level
or inside a function), so a lazy import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The project's importable packages, top (data preparation) to bottom (the library).
PACKAGES = ("data_prep", "pipeline")


def module_name(path: Path) -> str:
    """Dotted module name of a source file under the repository root.

    Args:
        path: a ``.py`` file inside one of :data:`PACKAGES`.

    Returns:
        e.g. ``pipeline.baselines.cnn`` (``pipeline.baselines`` for its ``__init__.py``).
    """
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Every module of :data:`PACKAGES`, by dotted name.

    Returns:
        module name -> source file.
    """
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that one module imports, anywhere in its source.

    ``from X import y`` counts as an import of ``X.y`` when that is a module, else of ``X``.

    Args:
        name: the module's dotted name (to resolve relative imports).
        path: its source file.
        known: the names of all project modules.

    Returns:
        the imported project modules (itself excluded).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import a.b.c`` of a non-module c: its package
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports.

    Returns:
        the graph over every module of :data:`PACKAGES`.
    """
    modules = project_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None.

    Args:
        graph: module -> imported modules.

    Returns:
        ``[m0, m1, ..., m0]`` or None when the graph is acyclic.
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_graph_sees_the_imports_it_must():
    graph = import_graph()
    assert "pipeline.io" in graph["data_prep.datalist"]
    assert "pipeline.datalist" in graph["data_prep.datalist"]
    assert "pipeline.datalist" in graph["pipeline.training"]  # an import inside a function
    assert len(graph) > 40


def test_pipeline_never_imports_data_prep():
    offenders = {name: sorted(m for m in deps if m.split(".")[0] == "data_prep")
                 for name, deps in import_graph().items() if name.split(".")[0] == "pipeline"}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"the library imports data_prep (layers import downward only): {offenders}"


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
])
def test_find_cycle(graph, expected):
    assert find_cycle(graph) == expected
