"""A table's body rows as HTML, in Python: what the page's ``cell`` macro and its ``trace``
(templates/report.html.j2) wrote for every cell, the same bytes (tests/test_run_overlap.py
keeps the macro as it was and holds this to it), without a Jinja2 macro call per cell: a
curves table at 1 M persons has about 10 000 cells, 0.2 s of CPU through the macros at the
end of a run, on one core."""

from __future__ import annotations

import re

from markupsafe import Markup
from markupsafe import escape as _escape

_SPECIAL = re.compile(r"[&<>'\"]")


def escape(v) -> str:
    """``v`` as the page's autoescape writes it (markupsafe's escape), without making a Markup
    object for text that needs no escaping (most cells are numbers)."""
    if hasattr(v, "__html__"):   # (as markupsafe: HTML already)
        return str(v.__html__())
    s = v if type(v) is str else str(v)
    return str(_escape(s)) if _SPECIAL.search(s) else s


def trace(c) -> str:
    """The cell's trace attributes (the ``trace`` macro)."""
    out = ""
    if c.columns:
        out += f' data-columns="{escape(" ".join(map(str, c.columns)))}"'
    if c.row:
        out += f' data-row="{escape(c.row)}"'
    if c.scale != 1:
        out += f' data-scale="{escape(c.scale)}"'
    if c.difference:
        out += f' data-difference="{escape(" ".join(map(str, c.difference)))}"'
    if c.suppressed:
        out += f' class="suppressed" title="{escape(c.suppressed)}"'
    return out


def body_rows(rows) -> Markup:
    """Every row of a table's body, each ``<tr>…</tr>`` and a newline (the ``table`` macro's
    loop over the ``cell`` macro)."""
    parts = []
    for row in rows:
        parts.append("<tr>")
        for c in row:
            tag = "th" if c.header else "td"
            scope = ' scope="row"' if c.header else ""
            parts.append(f"<{tag}{scope}{trace(c)}>{escape(c.text)}</{tag}>")
        parts.append("</tr>\n")
    return Markup("".join(parts))
