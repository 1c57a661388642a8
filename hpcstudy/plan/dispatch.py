"""One function per plan node type, per engine: what an engine supports is its registry.

    REF = Registry("reference")

    @REF.register(AgeRange)
    def _age(ctx, node): ...

    REF(node, ctx)     # the function for type(node), or NotSupported

A plan holding a node type the engine has no function for is refused before anything is read
(:meth:`Registry.check`), with the node's name and the engine's: "not supported by this
engine". ``supported`` lists the node types each engine handles (docs/architecture.md prints it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import fields, is_dataclass

from ..errors import UserError


class NotSupported(UserError):
    """A plan node an engine has no function for."""


class Registry:
    """Functions of one engine, keyed by plan node type (an exact type, not its bases: a new
    node type is unsupported until it is registered)."""

    def __init__(self, engine: str):
        self.engine = engine
        self.functions: dict[type, Callable] = {}

    def register(self, *types: type):
        def add(fn):
            for t in types:
                self.functions[t] = fn
            return fn
        return add

    def supports(self, node_type: type) -> bool:
        return node_type in self.functions

    def function(self, node) -> Callable:
        fn = self.functions.get(type(node))
        if fn is None:
            raise NotSupported(
                f"{type(node).__name__} ({_doc(node)}) is not supported by this engine "
                f"({self.engine})",
                fix=f"run with an engine that supports it ({', '.join(engines_for(type(node)))}"
                    ")" if engines_for(type(node)) else "no engine supports it yet")
        return fn

    def __call__(self, node, *args, **kw):
        return self.function(node)(node, *args, **kw)

    def check(self, nodes: Iterable, base: type | None = None) -> None:
        """Refuse (NotSupported) the first node among ``nodes`` (of type ``base``, when given)
        that this engine has no function for."""
        for n in nodes:
            if base is None or isinstance(n, base):
                self.function(n)


_ENGINES: dict[str, list[Registry]] = {}


def engine_registries(engine: str, *registries: Registry) -> None:
    """Declare the registries that together are what ``engine`` supports."""
    _ENGINES[engine] = list(registries)


def engines_for(node_type: type) -> list[str]:
    return [e for e, regs in _ENGINES.items() if any(r.supports(node_type) for r in regs)]


def supported(engine: str) -> list[type]:
    """The node types ``engine`` has a function for."""
    return sorted({t for r in _ENGINES.get(engine, []) for t in r.functions},
                  key=lambda t: t.__name__)


def walk(node) -> Iterable:
    """``node`` and every plan node inside it (tuples and fields of dataclasses)."""
    if isinstance(node, tuple | list):
        for x in node:
            yield from walk(x)
    elif is_dataclass(node) and not isinstance(node, type):
        yield node
        for f in fields(node):
            if f.name != "study":
                yield from walk(getattr(node, f.name))


def _doc(node) -> str:
    doc = (type(node).__doc__ or "").strip().splitlines()
    return doc[0].rstrip(".") if doc else type(node).__name__


def support_table() -> str:
    """A Markdown table of every node type an engine supports, and which engines do (what
    docs/architecture.md shows; a test keeps the two equal)."""
    from ..engines import partition, reference  # noqa: F401 - they register themselves

    engines = sorted(_ENGINES)
    types = sorted({t for e in engines for t in supported(e)},
                   key=lambda t: (t.__mro__[1].__name__, t.__name__))
    out = ["| node | kind | what it is | " + " | ".join(engines) + " |",
           "| --- | --- | --- | " + " | ".join("---" for _ in engines) + " |"]
    for t in types:
        doc = (t.__doc__ or "").strip().split("\n\n")[0]
        what = "" if doc.startswith(t.__name__ + "(") else \
            " ".join(doc.split()).rstrip(".").replace("``", "`")
        marks = " | ".join("yes" if t in supported(e) else "—" for e in engines)
        out.append(f"| `{t.__name__}` | {t.__mro__[1].__name__} | {what} | {marks} |")
    return "\n".join(out)
