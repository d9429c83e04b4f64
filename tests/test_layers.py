"""Layers import only downward: errors < fs < config, plots < data < models < losses < evaluation <
engine < apps < cli (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hegl_cli"
LAYERS = {
    "errors": 0, "__init__": 0, "fs": 1, "config": 2, "plots": 2, "data": 3, "models": 4, "losses": 5,
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
