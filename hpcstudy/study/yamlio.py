"""YAML that remembers where each value came from, so errors can say ``file:line``."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import UserError


class Node(dict):
    """A mapping from YAML that knows its own line and each key's line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.line = getattr(args[0], "line", 0) if args else 0
        self.lines = dict(getattr(args[0], "lines", {})) if args else {}

    def line_of(self, key) -> int:
        return self.lines.get(key, self.line)


class Seq(list):
    def __init__(self, *args):
        super().__init__(*args)
        self.line = 0
        self.lines: list[int] = []


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> Node:
    out = Node()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> Seq:
    out = Seq(loader.construct_object(v, deep=True) for v in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [v.start_mark.line + 1 for v in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)
# Dates stay text: the study language parses them itself, with its own error messages.
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def load(path: str | Path) -> Node:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such study file", fix="give the path of a .yaml study")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {e.object[e.start]:#04x})",
                        fix="save the file as UTF-8") from e
    return loads(text, str(path))


def loads(text: str, name: str = "<study>") -> Node:
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        context = getattr(e, "context_mark", None)
        where = f"{name}:{mark.line + 1}" if mark else name
        problem = getattr(e, "problem", None) or str(e)
        if context is not None and mark is not None and context.line != mark.line:
            problem += f" (in what opened at line {context.line + 1})"
        raise UserError(f"not valid YAML: {problem}", where=where,
                        fix="check the indentation, brackets and quoting there") from e
    if not isinstance(data, Node):
        raise UserError("a study must be a YAML mapping (name:, index: or exposure:, …)",
                        where=f"{name}:1")
    return data
