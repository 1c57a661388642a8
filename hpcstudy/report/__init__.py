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

import csv
import io
import json
import os
from pathlib import Path

from ..errors import CannotWrite, UserError
from ..outputs.run_record import code_version
from .build import REPORT_KINDS, Outputs, page
from .model import Figure, Table

REPORT = "report.html"
MARKDOWN = ".md"
PUBLICATION = "tables/publication"   # formatted CSV, apart from the raw tables/*.csv

__all__ = ["REPORT", "REPORT_KINDS", "render", "write"]


def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(loader=PackageLoader("hpcstudy.report", "templates"),
                       autoescape=select_autoescape(["html", "j2"], default=True),
                       undefined=StrictUndefined, keep_trailing_newline=True,
                       trim_blocks=False, lstrip_blocks=False)


def _markdown(t: Table) -> str:
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


def _publication_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.header)
    for row in t.rows:
        w.writerow([c.text for c in row])
    return buf.getvalue()


def render(out: str | Path) -> dict[str, bytes]:
    """The report's files for the run in ``out`` (nothing is written): ``report.html`` and, per
    publishable table, ``tables/<id>.md`` and ``tables/publication/<id>.csv``."""
    from . import figures as F

    o = Outputs(Path(out))
    version, code_sha = code_version()
    try:
        p = page(o, (version, code_sha))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        # only a hand-made manifest whose own hash was recomputed gets here
        raise UserError(f"{Path(out) / 'outputs.json'}: the files it lists are not a run's "
                        f"outputs ({type(e).__name__}: {e})", fix="re-run the study") from e
    for s in p.sections:
        for b in s.blocks:
            if isinstance(b, Figure):
                b.svg = F.inline(b.svg, b.id, b.caption)
    plan_path = next((e["path"] for e in o.entries if e["kind"] == "plan"), "plan.txt")
    html = _environment().get_template("report.html.j2").render(
        page=p, version=version, plan_path=plan_path)
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


def write(out: str | Path) -> list[str]:
    """Render the report of the run in ``out``, write its files and list them in
    ``OUT/outputs.json`` (replacing an earlier report's). Returns the paths written."""
    from ..outputs import manifest as M

    out = Path(out)
    files = render(out)
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
        raise CannotWrite(f"{out}: cannot write the report ({e.strerror or e})",
                          fix="free space or give write permission, then run "
                              "`hpcstudy report` again") from e
    return sorted(files)
