"""Layers import only downward: errors < fs < config, plots, htmlkit < data < models < losses < evaluation <
engine < apps < cli (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hegl_cli"
LAYERS = {
    "errors": 0, "__init__": 0, "fs": 1, "config": 2, "plots": 2, "htmlkit": 2, "data": 3, "models": 4, "losses": 5,
    "evaluation": 6, "engine": 7, "apps": 8, "cli": 9, "__main__": 10,
}


def layer_of(module: str) -> int:
    """'hegl_cli.engine.train' -> the layer of 'engine'."""
    return LAYERS[module.split(".")[1]]


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hegl_cli."):
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("hegl_cli.")]
    return names


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        module = "hegl_cli." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module.count(".") == 0:
            continue
        mine = layer_of(module)
        for imported in imports(path):
            if layer_of(imported) > mine:
                upward.append(f"{module} -> {imported}")
    assert not upward, upward


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        assert parts[0] in LAYERS, path


def test_each_command_has_one_implementation_named_after_it():
    """`hegl X` is cli/X.py (thin) and one module named X that does the work: apps/X.py, or
    engine/train.py for train; no other module is named after a command."""
    commands = {p.stem for p in (PACKAGE / "cli").glob("*.py")} - {"__init__", "app", "common", "config"}
    for command in commands:
        homes = [p for p in PACKAGE.rglob(f"{command}.py") if p.parent.name != "cli"]
        expected = PACKAGE / ("engine" if command == "train" else "apps") / f"{command}.py"
        assert homes == [expected], (command, homes)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("hegl_cli", *parts[:-1])) if parts[-1] == "__init__" else ".".join(("hegl_cli", *parts))


def import_graph() -> dict[str, set[str]]:
    """Module -> the hegl modules it imports (at the top or inside a function: a lazy import is an
    import all the same); ``from pkg import mod`` counts as importing ``pkg.mod``."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hegl_cli"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    edges.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith("hegl_cli")}
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_import_circle():
    assert import_cycles(import_graph()) == []


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
