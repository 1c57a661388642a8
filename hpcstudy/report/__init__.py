"""The study report: one self-contained HTML page per run, and its tables as Markdown and CSV.

    render(out) -> {relative path: bytes}     # pure: the same outputs give the same bytes
    write(out) -> list of paths written       # also lists them in OUT/outputs.json

The page is built only from ``OUT/outputs.json`` and the files it lists (``build.py``), drawn
with matplotlib (``figures.py``) and laid out by a Jinja2 template shipped with the package
(``templates/``). Figures are inline SVG; the page loads nothing and runs no script. Every
number in it is traced (``data-source``, ``data-row``, ``data-columns``) to the exported cell
it shows, so the export gate can check the page by itself (``verify.py``).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
from pathlib import Path

from ..errors import CannotWrite, UserError

REPORT = "report.html"
MARKDOWN = ".md"
PUBLICATION = "tables/publication"   # formatted CSV, apart from the raw tables/*.csv

__all__ = ["REPORT", "REPORT_KINDS", "render", "write"]


def __getattr__(name: str):
    # the package loads light: a run's figure process (drawing.py) imports none of the page
    if name == "REPORT_KINDS":
        from ..outputs.manifest import REPORT_KINDS

        return REPORT_KINDS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _environment():
    """The page's Jinja2 environment, made once per process: a run makes it, and compiles the
    page's template, while its partitions compute (pipeline.AFTER_THE_PARTITIONS)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    from .cells import body_rows

    env = Environment(loader=PackageLoader("hpcstudy.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"], default=True),
                      undefined=StrictUndefined, keep_trailing_newline=True,
                      trim_blocks=False, lstrip_blocks=False)
    # a table's rows in Python: one call per table, not a macro call per cell
    env.globals["body_rows"] = body_rows
    return env


def template():
    """The page's compiled template (compiled once per process, with the stylesheet it
    includes)."""
    env = _environment()
    env.get_template("report.css")   # its include, compiled now rather than at rendering
    return env.get_template("report.html.j2")


def _markdown(t) -> str:
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("|", "\\|")

    lines = [f"**{esc(t.caption)}**", "",
             "| " + " | ".join(esc(h) for h in t.header) + " |",
             "|" + "|".join(":--" if i == 0 else "--:" for i in range(len(t.header))) + "|"]
    for row in t.rows:
        lines.append("| " + " | ".join(esc(c.text) for c in row) + " |")
    reasons = list(dict.fromkeys(c.suppressed for row in t.rows for c in row if c.suppressed))
    notes = ([t.note] if t.note else []) + reasons
    if notes:
        lines.append("")
        lines += [esc(n) for n in notes]
    return "\n".join(lines) + "\n"


def _publication_csv(t) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.header)
    for row in t.rows:
        w.writerow([c.text for c in row])
    return buf.getvalue()


def render(out: str | Path, figures=None) -> dict[str, bytes]:
    """The report's files for the run in ``out`` (nothing is written): ``report.html`` and, per
    publishable table, ``tables/<id>.md`` and ``tables/publication/<id>.csv``. ``figures``: a
    :class:`~.drawing.FigureProcess` drawing the figures while this process lays the page out
    (the same bytes as drawing them here, the default)."""
    from ..outputs.run_record import code_version
    from .build import Outputs
    from .drawing import FigureFailed, FigureProcess, Placeholders

    version, code_sha = code_version()
    if not isinstance(figures, FigureProcess):
        o = Outputs(Path(out), None if figures is None else figures.draw)
        p = _page(o, out, version, code_sha)
        _inline_all(p)
        return _files(p, _html(p, o, version))
    ahead = Placeholders(figures)
    o = Outputs(Path(out), ahead.draw)
    p = _page(o, out, version, code_sha)
    spots: dict[str, list] = {}
    for b in _figures(p):
        spots.setdefault(b.svg, []).append(b)
    html = _html(p, o, version)   # laid out while the figures are drawn
    try:
        svgs = ahead.drawn()
    except FigureFailed:
        if figures.answered:
            raise
        # it stopped before its first figure (it could not start: another hpcstudy on its
        # path, a broken matplotlib): the figures drawn here, the same page
        return render(out)
    if all(svg is not None and len(spots.get(t, ())) == 1 and html.count(t) == 1
           for t, svg in svgs.items()):
        for t, svg in svgs.items():
            b = spots[t][0]
            html = html.replace(t, _inline(svg, b))
        return _files(p, html)
    # a figure with nothing to draw: its table stands alone, so the page is laid out again
    o.draw = ahead.known(svgs)
    p = _page(o, out, version, code_sha)
    _inline_all(p)
    return _files(p, _html(p, o, version))


def _page(o, out, version: str, code_sha: str):
    from .build import page

    try:
        return page(o, (version, code_sha))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        # only a hand-made manifest whose own hash was recomputed gets here
        raise UserError(f"{Path(out) / 'outputs.json'}: the files it lists are not a run's "
                        f"outputs ({type(e).__name__}: {e})", fix="re-run the study") from e


def _figures(p) -> list:
    from .model import Figure

    return [b for s in p.sections for b in s.blocks if isinstance(b, Figure)]


def _inline(svg: str, b) -> str:
    from .drawing import inline

    return inline(svg, b.id, b.caption)


def _inline_all(p) -> None:
    for b in _figures(p):
        b.svg = _inline(b.svg, b)


def _html(p, o, version: str) -> str:
    plan_path = next((e["path"] for e in o.entries if e["kind"] == "plan"), "plan.txt")
    return template().render(
        page=p, version=version, plan_path=plan_path)


def _files(p, html: str) -> dict[str, bytes]:
    files = {REPORT: html.encode()}
    seen = set()
    for t in p.tables():
        if not t.publish or not t.header or t.id in seen:   # (an empty table: page only)
            continue
        seen.add(t.id)
        files[f"tables/{t.id}{MARKDOWN}"] = _markdown(t).encode()
        files[f"{PUBLICATION}/{t.id}.csv"] = _publication_csv(t).encode()
    return files


def entries(files: dict[str, bytes]) -> list[dict]:
    """The manifest entries of the report's files."""
    from ..outputs import manifest as M

    out = []
    for path, data in files.items():
        e = {"path": path, "kind": "report" if path == REPORT else "report_table"}
        if path != REPORT:
            name = Path(path).name
            e["table"] = name.removesuffix(MARKDOWN).removesuffix(".csv")
        e["sha256"] = M.sha256(data)
        out.append(e)
    return out


def write(out: str | Path, figures=None) -> list[str]:
    """Render the report of the run in ``out`` (``figures``: as :func:`render`), write its
    files and list them in ``OUT/outputs.json`` (replacing an earlier report's). Returns the
    paths written."""
    from ..outputs import manifest as M
    from ..outputs.manifest import REPORT_KINDS

    out = Path(out)
    files = render(out, figures)
    doc = json.loads((out / M.NAME).read_text(encoding="utf-8"))
    old = [e["path"] for e in doc["files"] if e.get("kind") in REPORT_KINDS]
    doc["files"] = sorted([e for e in doc["files"] if e.get("kind") not in REPORT_KINDS] +
                          entries(files), key=lambda e: e["path"])
    doc["manifest_sha256"] = M.sha256(M.canonical(doc))
    try:
        for path, data in files.items():   # each file whole or not at all
            target = out / path
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        for path in old:
            if path not in files and (out / path).is_file():
                (out / path).unlink()
        tmp = out / f".{M.NAME}.tmp"
        tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        os.replace(tmp, out / M.NAME)
    except OSError as e:
        # no half-written file stays behind (it would hold every later export)
        for tmp in [out / f".{M.NAME}.tmp",
                    *((out / p).with_name(f".{(out / p).name}.tmp") for p in files)]:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        raise CannotWrite(f"{out}: cannot write the report ({e.strerror or e})",
                          fix="free space or give write permission, then run "
                              "`hpcstudy report` again") from e
    return sorted(files)
