"""Layers import only downward: base < data < models < losses < engine < evaluation < apps < cli."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hegl_cli"
LAYERS = {
    "errors": 0, "config": 0, "locking": 0, "metrics": 0, "plots": 0, "__init__": 0, "__main__": 8,
    "data": 1, "models": 2, "losses": 3, "engine": 4, "evaluation": 5, "explain": 6, "ablation": 6, "predict": 6, "report": 6, "cli": 7,
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
