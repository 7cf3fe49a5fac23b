"""Imports between mimo_rx's modules flow one way: no module imports, at run time, a module
that imports it back (directly or through others).

Every ``import`` counts, also one inside a function (a lazy import is still a circle: the
lower module depends on the higher one). Only imports under ``if TYPE_CHECKING:`` are left
out, since they never run.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import mimo_rx

PACKAGE = Path(mimo_rx.__file__).parent


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at ``root``."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The package's modules that ``name`` imports at run time -> the line of the first import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        # A package is set up before its modules, so ``from . import _x`` depends on _x only.
        if target in modules and target != name and not name.startswith(target + "."):
            found.setdefault(target, line)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.orelse:  # ``else:`` of ``if TYPE_CHECKING`` does run
                    visit_node(stmt)
                continue
            visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            add(target, node.lineno)
            for alias in node.names:  # ``from . import _x`` imports the module _x
                add(f"{target}.{alias.name}", node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def import_cycles(root: Path) -> list[list[str]]:
    """Each import circle of the package at ``root``, as a path of modules (first == last).

    One circle per strongly connected component of the import graph (Tarjan), shown as the
    shortest path from one of its modules back to itself.
    """
    modules = module_names(root)
    graph = {name: runtime_imports(name, path, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)

    cycles = []
    for component in components:
        start = min(component)
        paths = [[start]]
        while paths:  # breadth first, inside the component: the shortest way back
            path = paths.pop(0)
            if len(path) > 1 and path[-1] == start:
                break
            paths += [[*path, nxt] for nxt in sorted(graph[path[-1]]) if nxt in component]
        lines = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in itertools.pairwise(path)]
        cycles.append(lines)
    return cycles


def test_no_mimo_rx_module_imports_one_that_imports_it_back() -> None:
    cycles = import_cycles(PACKAGE)
    report = "\n\n".join("\n".join(cycle) for cycle in cycles)
    assert not cycles, f"import circles among mimo_rx's modules:\n{report}"


def test_the_check_sees_a_circle_closed_by_an_import_inside_a_function(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from ._high import High\n")
    (package / "_high.py").write_text("from ._low import low\n\nclass High: ...\n")
    (package / "_low.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from ._high import High\n\n"
        "def low() -> None:\n"
        "    from . import _high\n"
    )
    assert import_cycles(package) == [
        ["pkg._high (line 1) -> pkg._low", "pkg._low (line 6) -> pkg._high"]
    ]


def test_the_check_ignores_imports_that_only_type_checkers_run(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_high.py").write_text("from ._low import low\n")
    (package / "_low.py").write_text(
        "import typing\nif typing.TYPE_CHECKING:\n    from ._high import x\n\ndef low(): ...\n"
    )
    assert import_cycles(package) == []
