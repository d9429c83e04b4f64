"""One YAML loader for everything a user hands hegl (``--config`` files, ``--set`` values, a run's
config): safe (no Python objects), bounded in size, in nesting and in what aliases expand to.

PyYAML shares an aliased node instead of copying it, so a few hundred bytes of ``&a [*b, *b, ...]``
stand for billions of values that any later walk over the result expands. The composed node graph
is measured before anything is built from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hegl_cli.errors import UserError, first_line

MAX_BYTES = 1 << 20  # a config is a few kilobytes
MAX_VALUES = 100_000  # scalars, lists and mappings once every alias is expanded
MAX_DEPTH = 64


class YamlTooLarge(UserError):
    """YAML refused for its size, nesting or alias expansion (not for its syntax)."""


def _expanded_size(root: yaml.Node, source: str) -> int:
    """How many nodes the document holds with every alias expanded (shared nodes counted each time)."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if depth > MAX_DEPTH:
            raise YamlTooLarge(f"{source}: YAML nested more than {MAX_DEPTH} levels deep; refusing it")
        if key in visiting:
            raise YamlTooLarge(f"{source}: a YAML alias refers to itself; refusing it")
        visiting.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        visiting.discard(key)
        sizes[key] = min(total, MAX_VALUES + 1)
        if total > MAX_VALUES:
            raise YamlTooLarge(f"{source}: YAML that expands to more than {MAX_VALUES:,} values (its aliases "
                               "repeat one another); refusing it")
        return sizes[key]

    return size(root, 0)


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document safely; a UserError naming ``source`` for anything else."""
    if len(text) > MAX_BYTES:
        raise YamlTooLarge(f"{source}: {len(text) / 1e6:.1f} MB of YAML; a config is a few kilobytes, refusing it")
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters already
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: not valid YAML ({first_line(exc, 10_000)})") from exc
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: not valid YAML ({first_line(exc, 10_000)})") from exc
    except RecursionError:
        raise YamlTooLarge(f"{source}: YAML nested too deeply; refusing it") from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> Any:
    """Load a YAML file (after checking its size, before reading it)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a YAML file")
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    if path.stat().st_size > MAX_BYTES:
        raise YamlTooLarge(f"{path}: {path.stat().st_size / 1e6:.1f} MB of YAML; a config is a few kilobytes, refusing it")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid YAML (not UTF-8 text: {first_line(exc)})") from None
    return load_yaml(text, str(path))
