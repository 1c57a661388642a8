"""From a run's exported outputs to a :class:`~.model.Page`: what each section shows.

Only ``OUT/outputs.json`` and the files it lists are read (never ``OUT/private``), and each
only when its bytes still have the SHA-256 the manifest gives: a report shows what the run
exported, nothing else. Sections whose outputs are absent are left out.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from ..errors import UserError
from ..outputs.manifest import REPORT_KINDS
from ..outputs.manifest import csv_value as _value  # the gate's reading of a CSV cell
from . import formatting as fmt
from .model import Cell, Fact, Figure, Flow, FlowStep, Page, Section, Table

RATIOS = ("HR", "OR", "RR")
COUNTS = ("persons", "events", "at_risk", "persons_other", "events_other", "n")
GROUP = re.compile(r"^\s*group=(-?\d+) (.+?): index", re.MULTILINE)
DESCRIPTION = re.compile(r"^description: (.*)$", re.MULTILINE)
MODEL_NAMES = {"cox": "Cox proportional hazards", "logistic": "Logistic regression",
               "poisson": "Poisson regression", "lexis_poisson": "Poisson (Lexis) regression"}


class Outputs:
    """A run's exported outputs: the manifest (less any report files) and every file it lists,
    parsed. Raises UserError when the manifest or a file is not what the run wrote."""

    def __init__(self, out: Path, draw=None):
        from ..outputs import manifest as M

        self.out = Path(out)
        # draw(plot name, rows, ...) -> SVG or None (report/drawing.py: here or in a process)
        if draw is None:
            from .drawing import Here

            draw = Here().draw
        self.draw = draw
        path = self.out / M.NAME
        if not path.is_file():
            raise UserError(f"{path} is missing: not the --out of a finished run",
                            fix="give the --out folder of `hpcstudy run`")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not JSON ({e})", fix="re-run the study") from e
        if not isinstance(doc, dict) or doc.get("format") != M.FORMAT or \
                doc.get("manifest_sha256") != M.sha256(M.canonical(doc)):
            raise UserError(f"{path}: not the output manifest a run wrote (format or its own "
                            "SHA-256 differs)", fix="re-run the study")
        self.doc = doc
        self.entries = [e for e in doc["files"] if e.get("kind") not in REPORT_KINDS]
        self.min_cell = int(doc["min_cell"])
        self.text: dict[str, str] = {}
        for e in self.entries:
            p = self.out / e["path"]
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else None
            if data is None or M.sha256(data) != e["sha256"]:
                raise UserError(f"{p}: {'missing' if data is None else 'edited after the run'}"
                                " (its SHA-256 differs from outputs.json)",
                                fix="a report shows only what the run exported: re-run the study")
            self.text[e["path"]] = data.decode("utf-8")
        self.results = json.loads(self.text.get("results.json", "{}"))
        self.plan = next((self.text[e["path"]] for e in self.entries if e["kind"] == "plan"), "")
        self.run_path = next((e["path"] for e in self.entries if e["kind"] == "run"), None)
        self.run = json.loads(self.text[self.run_path]) if self.run_path else None

    def tables(self, kind: str | None = None) -> list[dict]:
        return [e for e in self.entries if e["kind"] not in ("results", "plan", "run")
                and (kind is None or e["kind"] == kind)]

    def rows(self, entry: dict) -> list[dict]:
        return read_csv(self.text[entry["path"]])

    def groups(self) -> dict[str, str]:
        """Group code -> label, as plan.txt states them."""
        return {code: label for code, label in GROUP.findall(self.plan)}


def read_csv(text: str) -> list[dict]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    return [dict(zip(rows[0], (_value(v) for v in r), strict=True)) for r in rows[1:]]


def _stem(entry: dict) -> str:
    return Path(entry["path"]).stem


def _title(name: str) -> str:
    return name.replace("_", " ")


def _heading(name: str) -> str:
    t = _title(name)
    return t[:1].upper() + t[1:]


# -- cells ---------------------------------------------------------------------------------------
def suppressed_reason(row: dict, min_cell: int) -> str:
    if isinstance(row.get("withheld"), str):
        return f"withheld: {row['withheld']}"
    return (f"suppressed: fewer than {min_cell} persons or events in this cell, or withheld "
            "so that another suppressed cell cannot be worked out from the totals")


def value_cell(row: dict, i: int, columns: tuple[str, ...], text, min_cell: int,
               scale: int = 1) -> Cell:
    """A cell showing ``columns`` of source row ``i`` through ``text`` (a function of the
    values); suppressed when the row is and a value is missing."""
    vals = [row.get(c) for c in columns]
    if any(v is None for v in vals):
        if row.get("suppressed") or row.get("withheld"):
            return Cell(fmt.SUPPRESSED, columns, i, scale,
                        suppressed=suppressed_reason(row, min_cell))
        return Cell(fmt.MISSING, columns, i, scale)
    return Cell(text(*vals), columns, i, scale)


def key_cell(row: dict, i: int, column: str, label=None) -> Cell:
    v = row.get(column)
    return Cell(fmt.MISSING if v is None else str(label(v) if label else v), (column,), i,
                header=True)


def _derived(name: str):
    if name == "person_years":
        return fmt.whole
    if name == "p":
        return fmt.p_value
    if name in ("mean", "median", "q1", "q3"):
        return fmt.measure
    return fmt.sig3


def generic_table(tid: str, caption: str, entry: dict, rows: list[dict], min_cell: int,
                  note: str = "", groups: dict[str, str] | None = None) -> Table:
    """Any table kind from its declared columns: keys as row headers, counts with separators,
    known triples (estimate, lower_95, upper_95) in one cell, other numbers to 3 digits."""
    cols = [(c["name"], c["role"]) for c in entry.get("columns", [])]
    names = [n for n, _ in cols]
    keys = [n for n, r in cols if r == "key"]
    counts = [n for n, r in cols if r == "count"]
    derived = [n for n, r in cols if r == "derived"]
    plan: list[tuple[str, tuple[str, ...], object, int]] = []
    used: set[str] = set()
    ci = ("lower_95", "upper_95")
    est = next((n for n in ("rate_per_1000py", "proportion", "rate", *RATIOS, "oe",
                            "standardised_rate") if n in derived), None) \
        if all(c in names for c in ci) else None
    for n in derived:
        if n in used or n in ci:
            continue
        if n == est:
            scale = 100 if n == "proportion" else 1
            f = fmt.percent if scale == 100 else fmt.sig3
            label = {"rate_per_1000py": "Rate per 1000 person-years (95 % CI)",
                     "proportion": "% (95 % CI)"}.get(n, f"{_label(n)} (95 % CI)")
            plan.append((label, (n, *ci), lambda a, b, c, f=f: fmt.interval(f(a), f(b), f(c)),
                         scale))
            used.update((n, *ci))
        else:
            plan.append((_label(n), (n,), _derived(n), 1))
            used.add(n)
    if est is None:
        for n in ci:
            if n in names:
                plan.append((_label(n), (n,), fmt.sig3, 1))
    header = [_heading(k) for k in keys] + [_label(c) for c in counts] + [p[0] for p in plan]
    body = []
    for i, r in enumerate(rows, 1):
        cells = [key_cell(r, i, k, (lambda v: groups.get(str(v), v)) if k == "group" and groups
                          else None) for k in keys]
        cells += [value_cell(r, i, (c,), fmt.count, min_cell) for c in counts]
        cells += [value_cell(r, i, cs, f, min_cell, scale) for _, cs, f, scale in plan]
        body.append(cells)
    return Table(tid, caption, entry["path"], header, body, note)


def _label(name: str) -> str:
    return {"persons": "Persons", "events": "Events", "person_years": "Person-years",
            "at_risk": "At risk", "persons_other": "Persons (reference)",
            "events_other": "Events (reference)", "coef": "Coefficient", "se": "SE",
            "p": "p", "z": "z", "smd_before": "SMD before", "smd_after": "SMD after",
            "oe": "Observed / expected", "expected": "Expected",
            "percent": "%"}.get(name, _heading(name))


def _figure(sec: Section, fid: str, caption: str, source: str, svg: str | None,
            table: Table | None) -> None:
    """A figure with its table beside it; the table alone when there is nothing to draw."""
    if svg is not None:
        sec.blocks.append(Figure(fid, caption, source, svg, table))
    elif table is not None:
        sec.blocks.append(table)


def _plotted(sec: Section, o: Outputs, e: dict, fid: str, caption: str, table_caption: str,
             plot: str | None, *args, groups: dict | None = None, **kw) -> None:
    """One exported table as a figure (``figures.<plot>(rows, *args, **kw)``; none when
    ``plot`` is None) with the table of its numbers beside it."""
    rows = o.rows(e)
    table = generic_table(_stem(e), table_caption, e, rows, o.min_cell, groups=groups)
    _figure(sec, fid, caption, e["path"],
            o.draw(plot, rows, *args, **kw) if plot is not None else None, table)


# -- sections ------------------------------------------------------------------------------------
def attrition_section(o: Outputs) -> Section | None:
    entries = o.tables("attrition")
    if not entries:
        return None
    sec = Section("attrition", "Attrition",
                  "Persons remaining after each eligibility, inclusion, overlap and matching "
                  "step, per arm; each arrow says how many persons the step removed and why.")
    for e in entries:
        arm = _stem(e).removeprefix("attrition_")
        rows = o.rows(e)
        steps, prev = [], None
        for i, r in enumerate(rows, 1):
            remaining = value_cell(r, i, ("persons",), fmt.count, o.min_cell)
            removed, why = None, [(i, str(r.get("step")))]
            if prev is not None and isinstance(r.get("persons"), int):
                d = rows[prev - 1]["persons"] - r["persons"]
                removed = Cell(fmt.count(d), ("persons",), i, difference=(prev, i))
                # after a suppressed step the drop is that of every step since the last shown
                why = [(j, str(rows[j - 1].get("step"))) for j in range(prev + 1, i + 1)]
            steps.append(FlowStep(str(r.get("step")), remaining, removed, why))
            if isinstance(r.get("persons"), int):
                prev = i
        table = generic_table(_stem(e), f"Attrition: {_title(arm)}", e, rows,
                              o.min_cell)
        sec.blocks.append(Flow(f"flow-{arm}", f"Arm: {_title(arm)}", e["path"], steps, table))
    return sec


def cohort_section(o: Outputs) -> Section | None:
    sec = Section("cohort", "Cohort and rates",
                  "Persons, events, person-years and crude rates per 1000 person-years with "
                  "exact Poisson 95 % confidence intervals.")
    for kind, cap in (("cohort", "Cohort"), ("rates", "Rates by group")):
        for e in o.tables(kind):
            sec.blocks.append(generic_table(_stem(e), cap, e, o.rows(e), o.min_cell,
                                            groups=o.groups()))
    return sec if sec.blocks else None


def table1_section(o: Outputs) -> Section | None:
    t1 = o.tables("table1")
    bal = o.tables("balance")
    pref = o.tables("preference")
    if not (t1 or bal or pref):
        return None
    sec = Section("table1", "Table 1: baseline characteristics",
                  "Baseline characteristics by arm; standardised mean differences (SMD) "
                  "before and after matching or weighting, and the overlap of the "
                  "propensity (preference) score where one was fitted.")
    design = o.results.get("design")
    if isinstance(design, dict):
        if isinstance(design.get("method"), str):
            sec.notes.append(Fact("Design", design["method"], "results.json", "design.method"))
        for i, w in enumerate(design.get("warnings") or []):
            if isinstance(w, str):
                sec.notes.append(Fact("Warning", w, "results.json", f"design.warnings.{i}"))
    for e in t1:
        sec.blocks.append(table1_table(e, o.rows(e), o.min_cell))
    for e in bal:
        _plotted(sec, o, e, f"love-{_stem(e)}", "Balance (Love) plot: absolute SMD per "
                 "characteristic; the dashed line marks 0.1", "Standardised mean differences",
                 "love_plot")
    for e in pref:
        rows = o.rows(e)
        table = pivot_table(_stem(e), "Persons by preference-score bin and arm", e, rows,
                            "bin", "arm", "persons", o.min_cell)
        _figure(sec, f"overlap-{_stem(e)}", "Preference-score overlap: persons per score "
                "bin, by arm", e["path"], o.draw("overlap_plot", rows), table)
    return sec


def table1_table(e: dict, rows: list[dict], m: int) -> Table:
    """Table 1, wide: a row per characteristic and level, a column per arm: n (%), mean (SD)
    or median (Q1–Q3), whichever the row holds."""
    arms = list(dict.fromkeys(r.get("arm") for r in rows))
    lines: dict[tuple, dict] = {}
    for i, r in enumerate(rows, 1):
        lines.setdefault((r.get("variable"), r.get("level")), {})[r.get("arm")] = (i, r)
    body = []
    for (_variable, level), by_arm in lines.items():
        i0, r0 = next(iter(by_arm.values()))
        cells = [key_cell(r0, i0, "variable"),
                 key_cell(r0, i0, "level") if level is not None else Cell("", header=True)]
        for a in arms:
            if a not in by_arm:
                cells.append(Cell(fmt.MISSING))
                continue
            i, r = by_arm[a]
            if r.get("mean") is not None or (r.get("sd") is not None):
                cells.append(value_cell(r, i, ("mean", "sd"),
                                        lambda x, s: f"{fmt.measure(x)} ({fmt.sig3(s)})", m))
            elif r.get("median") is not None:
                cells.append(value_cell(r, i, ("median", "q1", "q3"), lambda x, a, b:
                                        f"{fmt.measure(x)} ({fmt.measure(a)}–{fmt.measure(b)})",
                                        m))
            elif r.get("percent") is not None:
                cells.append(value_cell(r, i, ("persons", "percent"),
                                        lambda n, p: f"{fmt.count(n)} ({fmt.one_decimal(p)})",
                                        m))
            else:
                cells.append(value_cell(r, i, ("persons",), fmt.count, m))
        body.append(cells)
    header = ["Characteristic", "Level"] + [f"{a}: n (%) or mean (SD)" for a in arms]
    return Table(_stem(e), "Baseline characteristics by arm", e["path"], header, body,
                 "n (%) for categories; mean (SD) or median (Q1–Q3) for measurements.")


def pivot_table(tid: str, caption: str, e: dict, rows: list[dict], row_key: str,
                col_key: str, value: str, m: int) -> Table:
    cols = list(dict.fromkeys(r.get(col_key) for r in rows))
    lines: dict = {}
    for i, r in enumerate(rows, 1):
        lines.setdefault(r.get(row_key), {})[r.get(col_key)] = (i, r)
    body = []
    for _key, by in lines.items():
        i0, r0 = next(iter(by.values()))
        cells = [key_cell(r0, i0, row_key)]
        for c in cols:
            cells.append(value_cell(by[c][1], by[c][0], (value,), fmt.count, m) if c in by
                         else Cell(fmt.MISSING))
        body.append(cells)
    return Table(tid, caption, e["path"], [_title(row_key)] + [str(c) for c in cols], body)


def curves_section(o: Outputs) -> Section | None:
    entries = o.tables("curves")
    if not entries:
        return None
    groups = o.groups()
    sec = Section("curves", "Survival and cumulative incidence",
                  "Kaplan–Meier survival with 95 % confidence bands, and the cumulative "
                  "incidence with death as a competing risk; numbers at risk under the time "
                  "axis. A curve stops where fewer persons than the threshold remain at risk.")
    for e in entries:
        rows = o.rows(e)
        label = lambda v: groups.get(str(v), f"group {v}")  # noqa: E731
        body = []
        for i, r in enumerate(rows, 1):
            body.append([key_cell(r, i, "group", label), key_cell(r, i, "day"),
                         value_cell(r, i, ("at_risk",), fmt.count, o.min_cell),
                         value_cell(r, i, ("events",), fmt.count, o.min_cell),
                         value_cell(r, i, ("survival", "lower_95", "upper_95"),
                                    lambda a, b, c: fmt.interval(fmt.sig3(a), fmt.sig3(b),
                                                                 fmt.sig3(c)), o.min_cell),
                         value_cell(r, i, ("cumulative_incidence",), fmt.sig3, o.min_cell)])
        # an empty table without a word looked like a broken page
        note = ("Events are summed over the days since the previous point." if body else
                f"No point can be shown: a point needs at least {o.min_cell} persons at risk "
                f"and {o.min_cell} events since the one before, and the events after the last "
                f"point must be none or at least {o.min_cell} (docs/secure.md).")
        table = Table(_stem(e), "Curve points", e["path"],
                      ["Group", "Day", "At risk", "Events", "Survival (95 % CI)",
                       "Cumulative incidence"], body, note, publish=False)
        km = o.draw("km_plot", rows, groups, "survival")
        cif = o.draw("km_plot", rows, groups, "cumulative_incidence")
        if km is not None or cif is None:
            _figure(sec, "km", "Kaplan–Meier survival (95 % band)", e["path"], km, table)
        if cif is not None:   # its numbers: the survival figure's table, or its own
            _figure(sec, "cif", "Cumulative incidence (death competing)", e["path"], cif,
                    None if km is not None else table)
    return sec


def model_table(name: str, e: dict, rows: list[dict], m: int) -> Table:
    ratio = next((k for k in RATIOS if any(k in r for r in rows)), None)
    body = []
    for i, r in enumerate(rows, 1):
        cells = [key_cell(r, i, "term")]
        for c in ("persons", "events"):
            cells.append(value_cell(r, i, (c,), fmt.count, m) if r.get(c) is not None or
                         r.get("withheld") else Cell(fmt.MISSING))
        if ratio:
            cells.append(value_cell(r, i, (ratio, "lower_95", "upper_95"),
                                    lambda a, b, c: fmt.interval(fmt.sig3(a), fmt.sig3(b),
                                                                 fmt.sig3(c)), m))
        cells.append(value_cell(r, i, ("coef", "se"),
                                lambda a, b: f"{fmt.sig3(a)} ({fmt.sig3(b)})", m))
        cells.append(value_cell(r, i, ("p",), fmt.p_value, m))
        body.append(cells)
    header = ["Term", "Persons", "Events"] + ([f"{ratio} (95 % CI)"] if ratio else []) + \
        ["Coefficient (SE)", "p"]
    return Table(f"model_{name}", f"{MODEL_NAMES.get(name, _title(name))}", e["path"], header,
                 body, "Persons and events: those with the term's level (categorical terms).")


def models_section(o: Outputs) -> Section | None:
    res_models = dict(o.results.get("models") or {})
    if isinstance(o.results.get("lexis_model"), dict):
        res_models["lexis_poisson"] = o.results["lexis_model"]
    by_name = {_stem(e).removeprefix("model_"): e for e in o.tables("model")}
    if not res_models and not by_name:
        return None
    sec = Section("models", "Models",
                  "Estimates with 95 % confidence intervals; p-values as a paper prints them. "
                  "The forest plot shows each ratio on a log scale.")
    for name, res in res_models.items():
        field = "lexis_model" if name == "lexis_poisson" else f"models.{name}"
        title = MODEL_NAMES.get(name, _title(name))
        if not isinstance(res, dict) or name not in by_name:
            why = next((k for k in ("withheld", "error") if isinstance(res, dict) and
                        isinstance(res.get(k), str)), None)
            sec.notes.append(Fact(f"{title} {why or 'not shown'}", res[why] if why else "",
                                  "results.json" if why else "", f"{field}.{why}" if why
                                  else ""))
            continue
        e = by_name[name]
        rows = o.rows(e)
        table = model_table(name, e, rows, o.min_cell)
        totals = []
        for c in ("persons", "events"):
            if isinstance(res.get(c), int):
                totals.append(Fact(c, fmt.count(res[c]), "results.json", f"{field}.{c}"))
        if isinstance(res.get("standard_errors"), str):   # robust (clustered by person) or not
            totals.append(Fact("standard errors", res["standard_errors"], "results.json",
                               f"{field}.standard_errors"))
        table.caption = title
        table.totals = totals
        _figure(sec, f"forest-{name}", f"{title}: forest plot", e["path"],
                o.draw("forest_plot", rows), table)
    return sec


def lexis_section(o: Outputs) -> Section | None:
    entries = o.tables("lexis")
    if not entries:
        return None
    sec = Section("lexis", "Rates by age band and period",
                  "Incidence per 1000 person-years by age band, one line per calendar period "
                  "(Lexis split of follow-up).")
    for e in entries:
        _plotted(sec, o, e, "lexis-rates", "Rates by age band and period", "Lexis cells",
                 "lines_plot", "age_band", "period", "rate_per_1000py",
                 "Rate per 1000 person-years", "Age band", groups=o.groups())
    return sec


def measures_section(o: Outputs) -> Section | None:
    entries = o.tables("measure")
    if not entries:
        return None
    sec = Section("measures", "Measures",
                  "Proportions (or rates) with 95 % confidence intervals by interval and "
                  "group.")
    for e in entries:
        rows = o.rows(e)
        name = _stem(e).removeprefix("measure_")
        keys = [c["name"] for c in e.get("columns", []) if c["role"] == "key"]
        value = next((c for c in ("standardised_rate", "rate", "proportion")
                      if any(r.get(c) is not None for r in rows)), None)
        timed = [k for k in keys if re.search(r"year|period|interval|month|quarter|week", k)]
        x = timed[0] if timed else keys[-1] if keys else None
        by = next((k for k in keys if k != x), None)
        cap = _title(name) if not x or x in name else f"{_title(name)} by {_title(x)}"
        _plotted(sec, o, e, f"measure-{name}", cap[:1].upper() + cap[1:],
                 f"Measure: {_title(name)}", "lines_plot" if value and x else None, x, by,
                 value, _label(value or ""), _title(x or ""),
                 scale=100 if value == "proportion" else 1, ordered=bool(timed))
    return sec


def hospitals_section(o: Outputs) -> Section | None:
    entries = o.tables("hospitals")
    if not entries:
        return None
    sec = Section("hospitals", "Hospital comparison",
                  "Observed over expected events per hospital against the expected number "
                  "(funnel plot); the curves are the 95 % and 99.8 % control limits.")
    for e in entries:
        _plotted(sec, o, e, "funnel", "Funnel plot", "Hospitals", "funnel_plot")
    return sec


def other_section(o: Outputs, known: set[str]) -> Section | None:
    """Table kinds the report draws no figure for: shown as tables."""
    sec = Section("other", "Other tables")
    for e in o.tables():
        if e["kind"] not in known:
            sec.blocks.append(generic_table(_stem(e), _title(_stem(e)), e, o.rows(e),
                                            o.min_cell))
    return sec if sec.blocks else None


KNOWN = {"attrition", "cohort", "rates", "table1", "balance", "preference", "curves", "model",
         "lexis", "measure", "hospitals"}


def grouped(digest: str) -> str:
    """A hex digest in groups of 8 (as audit.json writes them): no run of digits in it can pass
    for a long identifier."""
    return " ".join(digest[i:i + 8] for i in range(0, len(digest), 8))


# run.json's fields as the Run section shows them, in this order
RUN_FACTS = (("engine", "Engine"), ("launcher", "Launcher"), ("workers", "Workers"),
             ("device", "Device"), ("peak_device_memory_mib", "Peak device memory (MiB)"))
TIMES = (("started", "Started (UTC)"), ("finished", "Finished (UTC)"),
         ("wall_seconds", "Run time (seconds)"))


def run_facts(o: Outputs, code: tuple[str, str]) -> list[Fact]:
    """What ran, on what and when: from the run record (run.json) where the run wrote one;
    else the code that writes this page and what results.json says of the run."""
    rec, src = o.run, o.run_path
    if not isinstance(rec, dict):
        run = o.results.get("run") or {}
        out = [Fact("Code version", f"hpcstudy {code[0]}", kind="version"),
               Fact("Code SHA-256", grouped(code[1]), kind="hash")]
        if isinstance(run.get("engine"), str):
            out.append(Fact("Engine", run["engine"], "results.json", "run.engine"))
        return out
    out = [Fact("hpcstudy version", str(rec["hpcstudy_version"]), src, "hpcstudy_version"),
           Fact("Code SHA-256", str(rec["code_sha256"]), src, "code_sha256", "hash")]
    for k, label in RUN_FACTS:
        if rec.get(k) is not None:
            out.append(Fact(label, str(rec[k]), src, k))
    for i, m in enumerate(rec.get("hardware") or []):
        out.append(Fact("CPU", str(m["cpu"]), src, f"hardware.{i}.cpu"))
        out.append(Fact("CPU cores", str(m["cores"]), src, f"hardware.{i}.cores"))
        for j, g in enumerate(m.get("gpus") or []):
            out.append(Fact("GPU", str(g), src, f"hardware.{i}.gpus.{j}"))
    for k, label in TIMES:
        out.append(Fact(label, str(rec[k]), src, k))
    return out


def facts(o: Outputs, code: tuple[str, str]) -> list[Fact]:
    run = o.results.get("run") or {}
    doc = o.doc
    out = [Fact("Study", str(o.results.get("study", doc["study"]["name"])), "results.json",
                "study"),
           Fact("Study file SHA-256", grouped(doc["study"]["sha256"]), "outputs.json",
                "study.sha256", "hash"),
           Fact("Data manifest SHA-256", grouped(doc["data_manifest_sha256"]), "outputs.json",
                "data_manifest_sha256", "hash")]
    out += run_facts(o, code)
    out.append(Fact("Disclosure threshold (persons per cell)", str(o.min_cell), "outputs.json",
                    "min_cell"))
    if doc.get("round_to"):
        out.append(Fact("Counts rounded to", str(doc["round_to"]), "outputs.json", "round_to"))
    if doc.get("project"):
        out.append(Fact("Project", str(doc["project"]), "outputs.json", "project"))
    for i, w in enumerate(run.get("study_warnings") or []):
        if isinstance(w, str):
            out.append(Fact("Study warning", w, "results.json", f"run.study_warnings.{i}"))
    return out


def page(o: Outputs, code: tuple[str, str]) -> Page:
    sections = [s for s in (attrition_section(o), table1_section(o), cohort_section(o),
                            curves_section(o), models_section(o), lexis_section(o),
                            measures_section(o), hospitals_section(o),
                            other_section(o, KNOWN)) if s is not None]
    m = DESCRIPTION.search(o.plan)
    name = str(o.doc["study"]["name"])
    return Page(name, m.group(1) if m else "", facts(o, code), sections, o.min_cell)
