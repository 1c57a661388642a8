"""YAML that remembers where each value came from, so errors can say ``file:line``.

Reading is bounded: a file over ``MAX_BYTES``, a document that expands (through aliases) to
more than ``MAX_NODES`` values or nests deeper than ``MAX_DEPTH`` is refused with one line
before anything is built, so a 500-byte "billion laughs" costs milliseconds, not gigabytes.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import UserError
from .keys import MAX_BYTES, MAX_DEPTH, MAX_NODES


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


MERGE = "tag:yaml.org,2002:merge"


def _mapping(loader: _Loader, node: yaml.MappingNode) -> Node:
    out = Node()
    out.line = node.start_mark.line + 1
    out.lines = {}
    own = sum(1 for k, _ in node.value if k.tag != MERGE)
    loader.flatten_mapping(node)           # `<<: *defaults` merges, as YAML 1.1 says
    merged = len(node.value) - own
    mine = set()
    for i, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain word, not a list or mapping",
                key_node.start_mark) from None
        if i >= merged:                    # a merged key may be overridden, not repeated
            if key in mine:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            mine.add(key)
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


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _bounded(root: yaml.Node, name: str) -> None:
    """Refuse a composed document whose alias expansion or nesting is out of bounds. Aliases
    are the same node object, so sizes are memoised per node: linear in the text."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            where = f"{name}:{node.start_mark.line + 1}"
            if size[key] > MAX_NODES:
                raise UserError(f"the document expands to more than {MAX_NODES} values "
                                "(through YAML aliases)", where=where,
                                fix="write the study without anchors and aliases (& and *)")
            if depth[key] > MAX_DEPTH:
                raise UserError(f"values nest deeper than {MAX_DEPTH} levels", where=where,
                                fix="a study nests a few levels; check the brackets")
            continue
        if key in size:
            continue
        if key in open_:
            raise UserError("a YAML alias refers to the value that contains it",
                            where=f"{name}:{node.start_mark.line + 1}",
                            fix="remove the alias (*name) inside its own anchor (&name)")
        open_.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def read_text(path: str | Path, what: str = "study") -> str:
    """The text of a UTF-8 file of at most MAX_BYTES, or a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what} file", fix="give the path of a .yaml " + what)
    with open(path, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise UserError(f"{path}: more than {MAX_BYTES} bytes: not a {what} file",
                        fix="long codelists belong in a CSV file (codelists: {x: {file: ...}})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"not UTF-8 text (byte 0x{data[e.start]:02x})", where=f"{path}:{line}",
                        fix="save the file as UTF-8") from None


def load(path: str | Path, what: str = "study") -> Node:
    return loads(read_text(path, what), str(path), what)


def loads(text: str, name: str = "<study>", what: str = "study") -> Node:
    if len(text) > MAX_BYTES:
        raise UserError(f"more than {MAX_BYTES} characters: not a {what}", where=name,
                        fix="long codelists belong in a CSV file (codelists: {x: {file: ...}})")
    try:
        loader = _Loader(text)   # the reader refuses control characters (a NUL) here
    except yaml.reader.ReaderError as e:
        line = text[:e.position].count("\n") + 1
        raise UserError(f"not valid YAML: character #x{e.character:04x} is not allowed",
                        where=f"{name}:{line}",
                        fix="remove the control character (save the file as plain text)") from None
    try:
        root = loader.get_single_node()
        if root is not None:
            _bounded(root, name)
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        context = getattr(e, "context_mark", None)
        where = f"{name}:{mark.line + 1}" if mark else name
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if context is not None and mark is not None and context.line != mark.line:
            problem += f" (in what opened at line {context.line + 1})"
        raise UserError(f"not valid YAML: {problem}", where=where,
                        fix="check the indentation, brackets and quoting there") from None
    except RecursionError:
        raise UserError(f"values nest deeper than {MAX_DEPTH} levels", where=name,
                        fix="a study nests a few levels; check the brackets") from None
    finally:
        loader.dispose()
    if not isinstance(data, Node):
        line = root.start_mark.line + 1 if root is not None else 1
        raise UserError(f"a {what} must be a YAML mapping (name: …, …)", where=f"{name}:{line}",
                        fix="write key: value lines, e.g. name: my_study")
    return data
