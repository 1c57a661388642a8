"""The export gate's own reading of a report: an independent parse of ``report.html`` and its
``tables/*.md`` / ``tables/publication/*.csv``, sharing no code with the writer.

    check(out, entry, text, manifest, min_cell) -> violations (one line each)

``report.html`` passes only when

* it can load nothing and run nothing: no script, no event-handler attribute, no frame, object,
  image, link, form or base element, no URL but a ``#fragment`` (no ``scheme:`` at all), no CSS
  ``url()`` but to a fragment, no ``@import``;
* every number in it (text, and the attributes a reader sees: title, aria-label, alt …) is
  accounted for: a number inside an element traced to an exported cell
  (``data-source`` on an ancestor, ``data-row``, ``data-columns``; ``data-difference`` for the
  drop between two attrition steps) equals that cell's value at the precision shown, a traced
  text equals its cell's text, and a cell that says "suppressed" is one the file withholds; a
  fact (``data-field``) equals its field in results.json, outputs.json or plan.txt; a number in
  a figure (outside its axis tick labels) equals a value of the figure's source file; any
  other number is one of the page's few fixed phrases (95 % CI, per 1000 person-years …);
* every count it shows (a count column of its source, an attrition drop) is 0 or at least the
  threshold, and nothing in its text is shaped like a CPR number or a long identifier.

A report table passes when its cells are exactly those of the same table in a passing
``report.html``. The sources are the files outputs.json lists, read here again and used only
when their bytes still have the manifest's SHA-256.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

from ..outputs.checks import CPR, LONG_INTEGER

REPORT_KINDS = ("report", "report_table")
NUMBER = re.compile(r"(?<![\w.#])(<\s*)?(-?\d[\d,]*(?:\.\d+)?)(?![\w])")
# the template's own phrases: 95 % CI, per 1000 person-years, 99.8 % limits, SMD 0.1,
# p < 0.001, SHA-256
STATIC = {95.0, 1000.0, 99.8, 0.1, 0.001, 100.0, 1.0, 256.0}
FORBIDDEN_TAGS = {"script", "iframe", "frame", "frameset", "object", "embed", "applet", "link",
                  "img", "image", "picture", "source", "audio", "video", "track", "form",
                  "input", "button", "base", "foreignobject", "portal", "noscript", "template",
                  "animate", "set", "animatemotion", "animatetransform", "feimage"}
URL_ATTRS = {"href", "xlink:href", "src", "srcset", "action", "formaction", "poster", "data",
             "background", "ping", "cite", "longdesc", "manifest", "codebase"}
SCHEME = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*:\s*//|\b(?:javascript|data|vbscript|file|blob)\s*:")
COUNT_NAMES = {"persons", "events", "at_risk", "persons_other", "events_other", "n"}
TICK = re.compile(r"(^|-)(x|y)tick_\d+$")
SHOWN_ATTRS = ("title", "aria-label", "alt", "label", "placeholder", "value", "summary")
VOID = {"area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
        "wbr", "path", "use", "rect", "circle", "line", "polyline", "polygon", "ellipse",
        "stop"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _value(v: str):
    # deliberately not the shared reader (outputs/manifest.py:csv_value, the gate's and the
    # writer's): the page's re-checker shares no code with what wrote the page, so one bug
    # cannot pass both
    if v == "":
        return None
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def _is_num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class Sources:
    """The run's exported files (not the report's), each only if unedited."""

    def __init__(self, out: Path, manifest: dict):
        self.manifest = manifest
        self.entries = {e["path"]: e for e in manifest.get("files", [])
                        if isinstance(e, dict) and e.get("kind") not in REPORT_KINDS}
        self.rows: dict[str, list[dict]] = {}
        self.text: dict[str, str] = {}
        self.bad: dict[str, str] = {}
        for p, e in self.entries.items():
            f = Path(out) / p
            try:
                data = f.read_bytes() if f.is_file() and not f.is_symlink() else None
            except OSError:
                data = None
            if data is None or _sha(data) != e.get("sha256"):
                self.bad[p] = "missing" if data is None else "edited after the run"
                continue
            try:
                self.text[p] = data.decode("utf-8")
            except UnicodeDecodeError:
                self.bad[p] = "not UTF-8"
                continue
            if p.endswith(".csv"):
                table = list(csv.reader(io.StringIO(self.text[p])))
                self.rows[p] = [dict(zip(table[0], map(_value, r), strict=False))
                                for r in table[1:]] if table else []
        # numbers in the exported files' names (captions are made from them)
        self.name_numbers = [float(x) for p in self.entries
                             for x in re.findall(r"(?<![\d.])\d+(?:\.\d+)?(?![\d.])",
                                                 p.replace("_", " "))]
        self.results = {}
        if "results.json" in self.text:
            try:
                self.results = json.loads(self.text["results.json"])
            except ValueError:
                self.bad["results.json"] = "not JSON"

    def group_label(self, code) -> str | None:
        """The label plan.txt gives a group code ("group=1 statin: index = …")."""
        for e in self.entries.values():
            if e.get("kind") == "plan":
                m = re.search(rf"^\s*group={re.escape(str(code))} (.+?): index",
                              self.text.get(e["path"], ""), re.MULTILINE)
                if m:
                    return m.group(1)
        return None

    def roles(self, path: str) -> dict[str, str]:
        cols = self.entries.get(path, {}).get("columns") or []
        return {c.get("name"): c.get("role") for c in cols if isinstance(c, dict)}

    def numbers(self, path: str) -> list[float]:
        return [float(v) for r in self.rows.get(path, []) for v in r.values() if _is_num(v)]

    def keys(self, path: str) -> set[str]:
        """Key values of a table, and the numbers written inside them (a band '2000-2004'
        shows in a figure's legend as its two ends)."""
        roles = self.roles(path)
        vals = {str(v) for r in self.rows.get(path, []) for k, v in r.items()
                if roles.get(k) == "key" and v is not None}
        return vals | {s for v in vals for s, _ in _numbers(v)}

    def field(self, source: str, name: str):
        """The value of a dotted field (list items by index); KeyError when absent."""
        if source == "outputs.json":
            node = self.manifest
        elif source == "results.json":
            node = self.results
        elif self.entries.get(source, {}).get("kind") == "run":
            try:
                node = json.loads(self.text.get(source, ""))
            except ValueError:
                raise KeyError(source) from None
        elif self.entries.get(source, {}).get("kind") == "plan" and name == "description":
            m = re.search(r"^description: (.*)$", self.text.get(source, ""), re.MULTILINE)
            if m is None:
                raise KeyError(name)
            return m.group(1)
        else:
            raise KeyError(source)
        for part in name.split("."):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                raise KeyError(name)
        return node


def _matches(shown: str, value: float, less: bool = False) -> bool:
    """Does the number as shown (its own precision) stand for ``value``?"""
    x = float(shown.replace(",", ""))
    if less:
        return 0 <= value < x
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    tol = 0.5 * 10 ** -decimals * (1 + 1e-9) + 1e-12 * abs(value)
    return abs(value - x) <= tol


def _numbers(text: str) -> list[tuple[str, bool]]:
    return [(m.group(2), bool(m.group(1))) for m in NUMBER.finditer(text)]


class _Page(HTMLParser):
    """Collects elements (tag, attrs, ancestors, text) and markup problems."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict]] = []
        self.elements: list[dict] = []     # traced elements, with their whole text
        self.loose: list[tuple[str, list[tuple[str, dict]]]] = []   # untraced text, context
        self.problems: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.titles: dict[str, set[str]] = {}     # table id -> reasons of its suppressed cells
        self._table_id: str | None = None
        self._open: list[dict] = []
        self._table: list | None = None
        self._row: list | None = None
        self._cell: list | None = None

    def _attr_problems(self, tag: str, attrs: dict) -> None:
        if tag in FORBIDDEN_TAGS:
            self.problems.append(f"a <{tag}> element (the page must load and run nothing)")
        if tag == "meta" and ("http-equiv" in attrs or "content" in attrs and
                              attrs.get("name") not in ("viewport", "generator")):
            self.problems.append("a <meta> element that does more than describe the page")
        for k, v in attrs.items():
            v = v or ""
            if k.startswith("on"):
                self.problems.append(f"an event-handler attribute {k!r} on <{tag}>")
            if k in URL_ATTRS and not v.startswith("#"):
                self.problems.append(f"<{tag} {k}={v[:60]!r}>: a link out of the page")
            if k == "style" and _css_problem(v):
                self.problems.append(f"<{tag} style>: {_css_problem(v)}")

    def handle_starttag(self, tag, attrs):
        attrs = {k.lower(): v for k, v in attrs}
        tag = tag.lower()
        self._attr_problems(tag, attrs)
        for k in SHOWN_ATTRS:   # text a reader sees or hears: its numbers are checked too
            if attrs.get(k) and not (k == "title" and "data-columns" in attrs):   # (see cells)
                self.loose.append((attrs[k], [*self.stack, (tag, attrs)]))
        if tag in VOID:
            return
        self.stack.append((tag, attrs))
        if "data-columns" in attrs or "data-field" in attrs or "data-kind" in attrs:
            el = {"tag": tag, "attrs": attrs, "ancestors": list(self.stack[:-1]), "text": []}
            self._open.append(el)
            self.elements.append(el)
        if tag == "table":
            self._table = []
            self._table_id = attrs.get("id") or f"#{len(self.tables)}"
            self.tables[self._table_id] = self._table
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
            if "title" in attrs and self._table_id is not None:
                self.titles.setdefault(self._table_id, set()).add(attrs["title"] or "")

    def handle_startendtag(self, tag, attrs):
        attrs = {k.lower(): v for k, v in attrs}
        self._attr_problems(tag.lower(), attrs)
        for k in SHOWN_ATTRS:
            if attrs.get(k):
                self.loose.append((attrs[k], [*self.stack, (tag.lower(), attrs)]))

    def handle_endtag(self, tag):
        tag = tag.lower()
        if tag in VOID:
            return
        while self.stack:
            t, attrs = self.stack.pop()
            if self._open and self._open[-1]["attrs"] is attrs:
                self._open.pop()
            if t == tag:
                break
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self.stack and self.stack[-1][0] == "style":
            if _css_problem(data):
                self.problems.append(f"<style>: {_css_problem(data)}")
            return
        if self._open:
            self._open[-1]["text"].append(data)
        elif data.strip():
            self.loose.append((data, list(self.stack)))

    def handle_comment(self, data):
        if data.strip():
            self.loose.append((data, list(self.stack)))

    def handle_pi(self, data):
        self.problems.append("a processing instruction")

    def unknown_decl(self, data):
        self.problems.append("an unknown declaration")


def _css_problem(css: str) -> str | None:
    low = css.lower()
    if "@import" in low:
        return "@import"
    for m in re.finditer(r"url\(\s*['\"]?([^)'\"]*)", low):
        if not m.group(1).startswith("#"):
            return f"url({m.group(1)[:40]}): a resource from outside the page"
    if "expression(" in low or "@font-face" in low:
        return "a CSS expression or font face"
    for m in re.finditer(r"content\s*:\s*([^;}]*)", low):
        if re.search(r"\d|attr\(|counter", m.group(1)):
            return f"CSS content {m.group(1)[:30]!r}: text the page's own parse cannot see"
    return None


def _source_of(ancestors: list[tuple[str, dict]]) -> str | None:
    for _, a in reversed(ancestors):
        if "data-source" in a:
            return a["data-source"]
    return None


def _in_tick(ancestors: list[tuple[str, dict]]) -> bool:
    return any(t == "g" and TICK.search(a.get("id") or "") for t, a in ancestors)


def _in_svg(ancestors) -> bool:
    return any(t == "svg" for t, _ in ancestors)


def _check_cell(el: dict, src: Sources, m: int, where: str) -> list[str]:
    a = el["attrs"]
    text = " ".join("".join(el["text"]).split())
    path = a.get("data-source") or _source_of(el["ancestors"])
    here = f"{where}: <{el['tag']}> {text[:40]!r}"
    if path not in src.entries:
        return [f"{here}: traced to {path!r}, which outputs.json does not list"]
    if path in src.bad:
        return [f"{here}: traced to {path}, {src.bad[path]}"]
    rows = src.rows.get(path)
    if rows is None:
        return [f"{here}: traced to {path}, which is not a table"]
    try:
        i = int(a.get("data-row", ""))
        row = rows[i - 1]
        if i < 1:
            raise IndexError
    except (ValueError, IndexError):
        return [f"{here}: row {a.get('data-row')!r} is not a row of {path}"]
    cols = (a.get("data-columns") or "").split()
    if any(c not in row for c in cols):
        return [f"{here}: column(s) {cols} are not all columns of {path}"]
    roles = src.roles(path)
    scale = float(a.get("data-scale", "1") or 1)
    out = []
    if "data-difference" in a:
        try:
            r1, r2 = (int(x) for x in a["data-difference"].split())
            v1, v2 = rows[r1 - 1].get(cols[0]), rows[r2 - 1].get(cols[0])
            values = [v1 - v2]
        except (ValueError, IndexError, TypeError):
            return [f"{here}: data-difference {a['data-difference']!r} names no two shown rows "
                    f"of {path}"]
    else:
        values = [row[c] for c in cols]
    for c, v in zip(cols, values, strict=True):
        count = roles.get(c) == "count" or c in COUNT_NAMES
        if count and _is_num(v) and 0 < v < m:
            out.append(f"{here}: column {c!r} of {path} row {i}: {v:g} is below {m}")
    if text == "suppressed":
        if any(v is not None for v in values):
            out.append(f"{here}: says suppressed, but {path} row {i} shows it")
        why = a.get("title") or ""
        if not why:
            out.append(f"{here}: a suppressed cell without its reason (title)")
        elif isinstance(row.get("withheld"), str):
            if why != f"withheld: {row['withheld']}":
                out.append(f"{here}: its reason is not {path} row {i}'s")
        elif any(not _matches(x, m) for x, _ in _numbers(why)):
            out.append(f"{here}: its reason ({why[:50]!r}) holds a number other than the "
                       f"threshold")
        return out
    if len(values) == 1 and isinstance(values[0], str):
        if text != " ".join(values[0].split()):
            out.append(f"{here}: is not {values[0]!r}, {path} row {i} column {cols[0]!r}")
        return out
    if text in ("–", "") and all(v is None for v in values):
        return out
    if cols == ["group"] and _is_num(values[0]) and text == src.group_label(values[0]):
        return out
    nums = _numbers(text)
    if len(nums) != len(values):
        return [*out, f"{here}: shows {len(nums)} number(s) for {len(values)} value(s) of "
                      f"{path} row {i} ({', '.join(cols)})"]
    for (s, less), c, v in zip(nums, cols, values, strict=True):
        if not _is_num(v):
            out.append(f"{here}: shows {s} where {path} row {i} column {c!r} holds no number")
        elif not _matches(s, v * scale, less):
            out.append(f"{here}: shows {s}, but {path} row {i} column {c!r} holds {v:g}")
    return out


def _check_fact(el: dict, src: Sources, where: str) -> list[str]:
    a = el["attrs"]
    text = " ".join("".join(el["text"]).split())
    here = f"{where}: <{el['tag']}> {text[:40]!r}"
    kind = a.get("data-kind", "text")
    if "data-field" not in a:
        if kind == "version" and re.fullmatch(r"hpcstudy [0-9][\w.+-]*|hpcstudy unknown", text):
            return []
        if kind == "hash" and re.fullmatch(r"[0-9a-f]{8}( [0-9a-f]{8}){7}", text):
            return []
        return [f"{here}: an untraced {kind} that is not one"]
    source = a.get("data-source") or ""
    if source in src.bad:
        return [f"{here}: traced to {source}, {src.bad[source]}"]
    try:
        v = src.field(source, a["data-field"])
    except KeyError:
        return [f"{here}: {source} has no field {a['data-field']!r}"]
    if kind == "hash" and isinstance(v, str):   # shown in groups of 8
        text, v = text.replace(" ", ""), v.replace(" ", "")
    if isinstance(v, str):
        return [] if text == " ".join(v.split()) else \
            [f"{here}: is not {source}:{a['data-field']} ({v[:40]!r})"]
    if _is_num(v):
        nums = _numbers(text)
        if len(nums) == 1 and _matches(nums[0][0], v):
            return []
    return [f"{here}: is not {source}:{a['data-field']} ({v!r})"]


def _check_loose(text: str, ancestors, src: Sources, where: str, min_cell: int) -> list[str]:
    if _in_tick(ancestors):
        return []     # axis tick labels: the scale, not data
    tags = {t for t, _ in ancestors}
    if "title" in tags and "svg" not in tags:
        return []     # the page title repeats the study name, checked in <h1>
    path = _source_of(ancestors)
    allowed = [float(x) for x in STATIC] + src.name_numbers + [float(min_cell)]
    if path is not None and path in src.rows:
        allowed += src.numbers(path)
        keys = src.keys(path)
    else:
        keys = set()
    out = []
    for s, _less in _numbers(text):
        if s in keys:
            continue
        if not any(_matches(s, v) for v in allowed):
            what = "a figure's text" if _in_svg(ancestors) else "text traced to no cell"
            out.append(f"{where}: {s} in {what} ({' '.join(text.split())[:50]!r}) is no "
                       f"number of {path or 'the exported files'}")
    return out


def check_html(text: str, src: Sources, min_cell: int, where: str) -> tuple[list[str], _Page]:
    page = _Page()
    out = []
    try:
        page.feed(text)
        page.close()
    except Exception as e:   # noqa: BLE001 (html.parser raises little, but anything is a refusal)
        return [f"{where}: not an HTML page ({e})"], page
    if SCHEME.search(text):
        out.append(f"{where}: a URL ({SCHEME.search(text).group(0)!r}): the page must load "
                   "nothing from outside itself")
    out += [f"{where}: {p}" for p in page.problems]
    for el in page.elements:
        if "data-columns" in el["attrs"]:
            out += _check_cell(el, src, min_cell, where)
        else:
            out += _check_fact(el, src, where)
    for t, ancestors in page.loose:
        out += _check_loose(t, ancestors, src, where, min_cell)
    words = [" ".join("".join(el["text"]).split()) for el in page.elements] + \
        [t for t, _ in page.loose]
    for n, line in enumerate(words, 1):
        if CPR.search(line) or LONG_INTEGER.search(line):
            out.append(f"{where}: text {n} ({line[:40]!r}): shaped like a CPR number or a "
                       "long identifier")
    if len(out) > 40:
        out = [*out[:40], f"{where}: … and {len(out) - 40} more"]
    return out, page


def _markdown_rows(text: str) -> tuple[list[list[str]], list[str]]:
    rows, other = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            rows.append([c.strip().replace("\\|", "|").replace("\\\\", "\\") for c in cells])
        elif line.strip():
            other.append(line)
    if len(rows) >= 2 and all(re.fullmatch(r":?-+:?", c) for c in rows[1]):
        rows.pop(1)
    return rows, other


_CHECKED: dict[tuple, tuple[list[str], _Page]] = {}


def _checked_html(text: str, src: Sources, min_cell: int, where: str) -> tuple[list[str], _Page]:
    """:func:`check_html`, once per page and sources: a gate checks the page, then each of the
    tables that repeat it against the page. The key holds all the check depends on: the page,
    the manifest (whose SHA-256 fix every source's bytes), the sources that failed them."""
    key = (_sha(text.encode()), _sha(json.dumps(src.manifest, sort_keys=True,
                                                default=str).encode()),
           tuple(sorted(src.bad.items())), min_cell, where)
    if key not in _CHECKED:
        if len(_CHECKED) > 16:
            _CHECKED.clear()
        _CHECKED[key] = check_html(text, src, min_cell, where)
    return _CHECKED[key]


def check(out: str | Path, entry: dict, text: str, manifest: dict, min_cell: int) -> list[str]:
    """Violations of one report file (kind ``report`` or ``report_table``)."""
    src = Sources(Path(out), manifest)
    where = entry["path"]
    if entry.get("kind") == "report":
        return list(_checked_html(text, src, min_cell, where)[0])
    page_entry = next((e for e in manifest.get("files", []) if e.get("kind") == "report"),
                      None)
    f = Path(out) / page_entry["path"] if page_entry else None
    if page_entry is None or not f.is_file() or _sha(f.read_bytes()) != page_entry["sha256"]:
        return [f"{where}: no unedited report page to compare it with"]
    html = f.read_text(encoding="utf-8")
    problems, page = _checked_html(html, src, min_cell, page_entry["path"])
    if problems:
        return [f"{where}: the report page it comes from is withheld ({problems[0]})"]
    table = page.tables.get(f"t-{entry.get('table')}")
    if table is None:
        return [f"{where}: the report page has no table {entry.get('table')!r}"]
    if where.endswith(".md"):
        rows, other = _markdown_rows(text)
        out = []
        reasons = {" ".join(t.split()) for t in page.titles.get(f"t-{entry.get('table')}", ())}
        for line in other:
            if " ".join(line.replace("\\|", "|").split()) in reasons:
                continue   # a suppressed cell's reason, as the page gives it
            for s, _ in _numbers(line):
                if not any(_matches(s, v) for v in [*STATIC, float(min_cell),
                                                      *src.name_numbers]):
                    out.append(f"{where}: {s} in {line[:50]!r} is in no table")
    else:
        try:
            rows, out = list(csv.reader(io.StringIO(text))), []
        except csv.Error as e:
            return [f"{where}: not CSV ({e})"]
    html_rows = [r for r in table if r]
    if rows != html_rows:
        diff = next((i for i, (a, b) in enumerate(zip(rows, html_rows, strict=False), 1)
                     if a != b), min(len(rows), len(html_rows)) + 1)
        out.append(f"{where}: row {diff} differs from the table t-{entry.get('table')} of "
                   f"{page_entry['path']}, which it repeats")
    return out
