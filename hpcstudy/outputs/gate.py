"""The export gate: a run's files leave only when they are what the run declared, unchanged,
and every cell passes the disclosure rules.

``check(out)`` accepts a file under OUT (never ``private/``) only when

* ``OUT/outputs.json`` (see ``manifest.py``) is present, well formed and its own hash holds;
* the file is listed there and its SHA-256 matches (an edited file is refused);
* its content parses as its declared kind with exactly its declared columns, each column of a
  role the kind allows (a ``count`` column, an extra or renamed column, an undeclared JSON field
  are refused), its values of their role's type, no dates, no per-person shape;
* every cell passes the disclosure rules (``_cell_rules``) at the threshold, which is never
  below the floor (5, or the project approval's ``min_cell`` when higher).

The study report (``report.html``, ``tables/*.md``, ``tables/publication/*.csv``) is checked
by its own independent parse (``hpcstudy/report/verify.py``); the run record (``run.json``)
by its fixed fields (``checks.run_record``). Anything else under OUT — a
``.txt``, an undeclared ``.md``, ``tables/people.csv`` — is refused as unknown.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from . import checks as C
from . import manifest as M
from . import text as T

MIN_CELL_FLOOR = 5     # the Danish rule: hpcstudy never exports a cell of fewer persons
DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}[./]\d{1,2}[./]\d{2,4}|\d{2}[a-z]{3}\d{4}",
                  re.IGNORECASE)
SHA = re.compile(r"[0-9a-f]{64}")
# the counts a table of each kind cannot be without (an aggregate states how many it holds)
REQUIRED = {"cohort": ("persons", "events"), "rates": ("persons", "events"),
            "hospitals": ("persons", "events"),
            "lexis": ("events",), "curves": ("at_risk", "events"), "attrition": ("persons",),
            "measure": ("persons", "events"), "table1": ("persons",), "preference": ("persons",),
            "table1_adjusted": ("persons",)}
LEXIS_TERM = re.compile(r"(age_band|period|time_band) \S+")
RUN_FIELDS = {"engine", "data_manifest_sha256", "min_cell", "round_to", "status_codes",
              "approval", "study_warnings", "device"}


def min_cell_floor(approval=None) -> int:
    """The lowest threshold allowed: 5, or the project's ``min_cell`` when that is higher."""
    return max(MIN_CELL_FLOOR, approval.min_cell if approval is not None else 0)


def min_cell_problems(study, approval=None) -> list:
    """A study (or variant) whose ``disclosure.min_cell`` is below hpcstudy's floor of 5."""
    from ..study.language import Problem

    if study.min_cell >= MIN_CELL_FLOOR:
        return []
    return [Problem(study.source, "disclosure.min_cell",
                    f"{study.min_cell} is below the floor of {MIN_CELL_FLOOR} persons per cell "
                    "that hpcstudy never goes under",
                    f"remove it or set min_cell: {min_cell_floor(approval)} or more")]


def key_name_problems(study) -> list:
    """Covariates in ``rates: {by: …}`` or a measure's ``by:`` named like a count, estimate or
    flag column: their key column would collapse into it (and the table lose its keys)."""
    from ..study.language import Problem

    an = study.analyses
    uses = [("analyses.rates.by", an.rates_by or ())] + \
        [(f"analyses.measures.{m.name}.by", m.by) for m in an.measures]
    out = [Problem(study.source, f, f"{k!r} is the name of an output column, so it cannot "
                   "name a table's rows", f"rename the covariate (e.g. {k}_at_index)")
           for f, by in uses for k in by if k in M.RESERVED]
    return out


def threshold(option: int | None = None, approval=None, declared: int | None = None) -> int:
    """The threshold the gate checks with: the floor, raised by the run's declared threshold
    and by ``--min-cell``; an option below the floor is refused."""
    floor = min_cell_floor(approval)
    if option is not None and option < floor:
        why = f"project {approval.project}'s floor" if approval is not None and \
            approval.min_cell > MIN_CELL_FLOOR else "the floor hpcstudy never goes under"
        raise UserError(f"--min-cell {option} is below {floor}, {why}",
                        fix=f"leave --min-cell out or give {floor} or more")
    return max(floor, declared if isinstance(declared, int) else 0, option or 0)


def _cell_rules(kind: str, data, min_cell: int, where: str) -> list[str]:
    """The disclosure rules for one declared piece of output: a table's rows, a model result
    (dict with ``terms``) or a text. The one place the gate asks the rules, through the
    re-checker (:mod:`hpcstudy.outputs.checks`), which shares no code with the writer's
    suppression."""
    from .checks import check_kind

    if kind not in M.FILE_KINDS:
        return [f"{where}: no disclosure rule for kind {kind!r}"]
    return check_kind(kind, data, min_cell, where)


def _across_files(verdict: Verdict) -> None:
    """Rules between the files that passed one by one (attrition against the cohort, a count
    shown in one file and withheld in another): a file named in a problem is held."""
    from .checks import check_run

    for problem in check_run(dict(verdict.contents), verdict.min_cell):
        p = problem.split(": ", 1)[0].split(":", 1)[0]
        if p not in verdict.contents or problem in verdict.held.get(p, []):
            continue
        verdict.hold(p, problem)
        verdict.passed.remove(p)
        del verdict.contents[p]
        verdict.blobs.pop(p, None)


def _reports_of_withheld(verdict: Verdict, manifest: dict) -> None:
    """A report page (and the tables written from it) shows cells of the files it traces
    (``data-source``): when one of them is withheld, so is the page. The page's own check
    reads those files as they are, so it passed an SMD that the gate withholds in
    tables/balance.csv (an outside tester, session 6)."""
    import re

    kinds = {e.get("path"): e.get("kind") for e in manifest.get("files", [])
             if isinstance(e, dict)}
    pages = [p for p in verdict.passed if kinds.get(p) == "report"]
    for p in pages:
        sources = set(re.findall(r'data-source="([^"]+)"', verdict.blobs[p].decode("utf-8",
                                                                                   "replace")))
        held = sorted(s for s in sources if s in verdict.held)
        if held:
            verdict.hold(p, f"{p}: shows cells of {held[0]}, which is withheld")
    if any(p in verdict.held for p in pages):
        for p in [p for p in verdict.passed if kinds.get(p) in M.REPORT_KINDS]:
            if p not in verdict.held:
                verdict.hold(p, f"{p}: the report page it comes from is withheld")
    for p in [p for p in verdict.passed if p in verdict.held]:
        verdict.passed.remove(p)
        verdict.contents.pop(p, None)
        verdict.blobs.pop(p, None)


@dataclass
class Verdict:
    """What the gate decided for one run folder."""
    out: Path
    min_cell: int
    manifest: dict | None
    passed: list[str] = field(default_factory=list)          # relative paths that may leave
    held: dict[str, list[str]] = field(default_factory=dict)  # path -> reasons
    contents: dict[str, tuple[str, object]] = field(default_factory=dict)  # passed: (kind, data)
    blobs: dict[str, bytes] = field(default_factory=dict)   # passed: the bytes that were checked
    # the numbers and codes the study kept with the run declares (text.py), else why not
    vocab: T.Vocabulary | None = None
    no_vocab: str | None = None
    # the sketches of the persons behind its counts (secure/sketches.py), once the export
    # register has read and checked them (secure/exports.py); never exported
    person_sets: dict | None = None

    def hold(self, path: str, reason: str) -> None:
        self.held.setdefault(path, []).append(reason)


def _files(out: Path) -> list[str]:
    """Every entry under OUT but private/ (plain files, links, odd entries), relative."""
    found = []
    for root, dirs, files in os.walk(out):
        rel = Path(root).relative_to(out)
        if rel == Path("."):
            dirs[:] = [d for d in dirs if d != "private"]
            files = [f for f in files if f != "private"]
        for d in list(dirs):
            if (Path(root) / d).is_symlink():
                found.append(str(rel / d))
                dirs.remove(d)
        found += [str(rel / f) for f in files]
    return sorted(p.removeprefix("./") for p in found)


def _manifest_problem(doc) -> str | None:
    """Why a manifest document cannot be trusted, or None."""
    if not isinstance(doc, dict) or doc.get("format") != M.FORMAT:
        return f"not an hpcstudy output manifest (format {M.FORMAT})"
    if doc.get("manifest_sha256") != M.sha256(M.canonical(doc)):
        return "edited: its own SHA-256 does not match its content"
    if not isinstance(doc.get("min_cell"), int) or not isinstance(doc.get("files"), list):
        return "malformed: min_cell or files missing"
    seen = set()
    for e in doc["files"]:
        if not isinstance(e, dict) or not isinstance(e.get("path"), str):
            return "malformed file entry"
        p = e["path"]
        parts = Path(p).parts
        if Path(p).is_absolute() or ".." in parts or not parts or parts[0] == "private" \
                or p == M.NAME or p in seen or str(Path(p)) != p:
            return f"lists {p!r}, which no run exports"
        seen.add(p)
        if e.get("kind") not in M.FILE_KINDS or not SHA.fullmatch(str(e.get("sha256"))):
            return f"{p}: unknown kind or bad SHA-256"
    return None


def _declared(cols) -> list[tuple[str, str]] | str:
    """[(name, role)] of a declared column list, or why it is not one."""
    if not isinstance(cols, list) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) and
            isinstance(c.get("role"), str) for c in cols):
        return "malformed column list"
    return [(c["name"], c["role"]) for c in cols]


def _schema_problems(kind: str, cols: list[tuple[str, str]], where: str) -> list[str]:
    """Declared columns the catalogue does not allow for this kind, or roles that lie."""
    out = []
    names = [n for n, _ in cols]
    missing = [c for c in REQUIRED.get(kind, ()) if c not in names]
    if missing and names:
        out.append(f"{where}: a {kind} table without {missing} is not one")
    if len(set(names)) != len(names):
        out.append(f"{where}: a column is declared twice")
    keys = tuple(n for n, r in cols if r == "key")
    for name, r in cols:
        try:
            actual = M.role(kind, name, keys)
        except M.ManifestError as e:
            out.append(f"{where}: {e}")
            continue
        if actual != r:
            out.append(f"{where}: column {name!r} declared as {r}, but it is a {actual} column")
    return out


def _value_problems(kind: str, rows: list[dict], cols: list[tuple[str, str]], where: str,
                    min_cell: int, population: int | None) -> list[str]:
    """Values of the wrong type for their role, dates, and per-person shape."""
    out = []
    roles = dict(cols)
    for i, r in enumerate(rows, 1):
        for c, v in r.items():
            role = roles.get(c)
            if v is None:
                continue
            if isinstance(v, str) and DATE.search(v):
                out.append(f"{where}: row {i}, column {c!r}: a date ({v!r}); dates are "
                           "per-person detail and never exported")
            elif role == "count" and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                out.append(f"{where}: row {i}, column {c!r}: {v!r} is not a count")
            elif role == "derived" and (isinstance(v, bool) or not isinstance(v, int | float)):
                out.append(f"{where}: row {i}, column {c!r}: {v!r} is not a number")
            elif role == "key" and (isinstance(v, float) or isinstance(v, bool)):
                out.append(f"{where}: row {i}, column {c!r}: {v!r}: a key of non-integer "
                           "numbers looks like per-person values")
            elif role == "flag" and c == "suppressed" and v not in (True, "True"):
                out.append(f"{where}: row {i}, column {c!r}: {v!r} is not a flag")
            if len(out) > 20:
                return [*out, f"{where}: … and more"]
    counts = [c for c, role in cols if role == "count"]
    derived = [c for c, role in cols if role == "derived"]
    if kind != "model":   # a withheld row's rate, interval or proportion gives its count back
        for i, r in enumerate(rows, 1):
            if any(r.get(c) is None for c in counts) and \
                    any(r.get(c) is not None for c in derived):
                out.append(f"{where}: row {i}: a count is withheld but what is derived from "
                           "it is shown (it gives the count back)")
    shown = [r for r in rows if any(isinstance(r.get(c), int) and r[c] > 0 for c in counts)]
    if population and kind != "attrition" and len(shown) * min_cell > population:
        out.append(f"{where}: {len(shown)} rows with counts for {population} persons: a table "
                   f"of cells of at least {min_cell} cannot have that many (per-person shaped)")
    # rows in time or attained age (with person-time) count a person in each row they have
    # time in: a measure by year of 7 400 persons over 3 years adds up to 22 000
    in_time = kind == "measure" and any("person_years" in r and any(
        k in r for k in ("interval", "time_band", "age_band")) for r in rows)
    if population and kind in ("rates", "measure") and not in_time and all(
            isinstance(r.get("persons"), int) for r in rows) and \
            sum(r.get("persons") or 0 for r in rows) > population:
        out.append(f"{where}: its persons add up to more than the {population} persons of the "
                   "cohort: not a table of this run's cohort")
    return out


def _parse_csv(text: str) -> tuple[list[str], list[dict]]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return [], []
    header, parsed = rows[0], []
    for r in rows[1:]:
        if len(r) != len(header):
            raise ValueError(f"a row has {len(r)} fields, the header {len(header)}")
        parsed.append({k: _cell(v) for k, v in zip(header, r, strict=True)})
    return header, parsed


_cell = M.csv_value   # (shared with the report's writer, which reads the same CSVs)


def _same_rows(csv_rows: list[dict], json_rows: list[dict]) -> bool:
    """The CSV's rows are the results.json section's (numbers to the CSV's 10 digits)."""
    if len(csv_rows) != len(json_rows):
        return False
    for a, b in zip(csv_rows, json_rows, strict=True):
        for k in set(a) | set(b):
            x, y = a.get(k), b.get(k)
            if isinstance(y, float) and math.isnan(y):
                y = None
            if isinstance(x, int | float) and isinstance(y, int | float) and \
                    not isinstance(x, bool):
                if not math.isclose(x, y, rel_tol=1e-8, abs_tol=1e-9):
                    return False
            elif x != y and str(x) != str(y):
                return False
    return True


def _numbers(obj) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _numbers(v) for k, v in obj.items())
    return isinstance(obj, int | float) and not isinstance(obj, bool)


def _meta_problems(res: dict, manifest: dict, where: str) -> list[str]:
    out = []
    if not isinstance(res.get("study"), str):
        out.append(f"{where}:study: not a study name")
    run = res.get("run")
    if not isinstance(run, dict) or set(run) - RUN_FIELDS:
        extra = sorted(set(run) - RUN_FIELDS) if isinstance(run, dict) else []
        out.append(f"{where}:run: undeclared field(s) {extra}" if extra else
                   f"{where}:run: missing")
    else:
        if run.get("min_cell") != manifest["min_cell"]:
            out.append(f"{where}:run.min_cell: {run.get('min_cell')!r} differs from the run's "
                       f"declared threshold {manifest['min_cell']} (edited)")
        if run.get("data_manifest_sha256") != manifest.get("data_manifest_sha256"):
            out.append(f"{where}:run.data_manifest_sha256: differs from outputs.json (edited)")
        warnings = run.get("study_warnings", [])
        if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
            out.append(f"{where}:run.study_warnings: not a list of messages")
        codes = run.get("status_codes", {})
        if not isinstance(codes, dict) or not all(isinstance(v, str) for v in codes.values()):
            out.append(f"{where}:run.status_codes: not a list of names")
    if "planted_truth" in res and not _numbers(res["planted_truth"]):
        out.append(f"{where}:planted_truth: holds something other than numbers")
    if "design" in res:
        out += _design_problems(res["design"], f"{where}:design")
    return out


# a comparative design's settings and diagnostics: no field is a count of persons, nor a
# value of persons' scores or weights (publish.SCORE_VALUES)
DESIGN_FIELDS = {"method": str, "covariates": list, "estimand": str, "ratio": int,
                 "replace": bool, "caliper_sd": (float, int, type(None)),
                 "stabilised": bool, "strata": int,
                 "equipoise_share": (float, type(None)), "max_abs_smd_after": (float, type(None)),
                 "both_arms": str, "warnings": list, "bootstrap": dict, "left_out": list}
# the bootstrap interval's fields (designs/bootstrap.py): replicates, not persons
BOOTSTRAP_FIELDS = {"replicates": int, "failed": int, "term": str,
                    "se": (float, type(None)), "lower_95": (float, type(None)),
                    "upper_95": (float, type(None))}


def _design_problems(d, where: str) -> list[str]:
    if not isinstance(d, dict):
        return [f"{where}: not a design section"]
    extra = sorted(set(d) - set(DESIGN_FIELDS))
    if extra:
        return [f"{where}: undeclared field(s) {extra}"]
    out = [f"{where}.{k}: not a {DESIGN_FIELDS[k]}" for k, v in d.items()
           if not isinstance(v, DESIGN_FIELDS[k])]
    for k in ("covariates", "warnings", "left_out"):
        if not all(isinstance(x, str) for x in d.get(k, [])):
            out.append(f"{where}.{k}: not a list of text")
    b = d.get("bootstrap")
    if isinstance(b, dict):
        if set(b) != set(BOOTSTRAP_FIELDS):
            out.append(f"{where}.bootstrap: fields {sorted(set(b) ^ set(BOOTSTRAP_FIELDS))} "
                       "differ from the declared")
        out += [f"{where}.bootstrap.{k}: not a {BOOTSTRAP_FIELDS[k]}" for k, v in b.items()
                if k in BOOTSTRAP_FIELDS and (not isinstance(v, BOOTSTRAP_FIELDS[k]) or
                                              isinstance(v, bool))]
    return out + C.text_problems("\n".join(d.get("warnings", [])), where)


def _sections(res: dict) -> dict[str, object]:
    """Every table or model of a results document by path; None for anything unknown."""
    found: dict[str, object] = {}
    for k, v in res.items():
        if k in M.META:
            continue
        if k in ("attrition", "models", "measures") and isinstance(v, dict):
            for name, x in v.items():
                found[f"{k}.{name}"] = x
        else:
            found[k] = v
    return found


def _check_table(verdict: Verdict, where: str, kind: str, rows, cols, population,
                 rules: bool = True) -> list[str]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return [f"{where}: not a table of rows"]
    actual = M.columns_of(rows, kind)
    names = [n for n, _ in cols]
    if actual != names:
        extra = [c for c in actual if c not in names]
        gone = [c for c in names if c not in actual]
        what = f"undeclared column(s) {extra}" if extra else \
            f"declared column(s) {gone} missing" if gone else "columns in another order"
        return [f"{where}: {what}: the table is not the one the run declared"]
    return _value_problems(kind, rows, cols, where, verdict.min_cell, population) + \
        (_cell_rules(kind, rows, verdict.min_cell, where) if rules else [])


def _check_model(verdict: Verdict, where: str, m, spec: dict, population) -> list[str]:
    if not isinstance(m, dict):
        return [f"{where}: not a model result"]
    scalars = spec.get("scalars") if isinstance(spec.get("scalars"), dict) else {}
    notes = [k for k in m if k in M.MODEL_NOTES]
    if notes:
        if set(m) != set(notes) or set(scalars) != set(notes) or \
                not all(isinstance(m[k], str) for k in notes):
            return [f"{where}: a withheld model carries nothing but its reason"]
        return C.text_problems(" ".join(m[k] for k in notes), where)
    actual = {k for k in m if k != "terms"}
    if actual != set(scalars):
        return [f"{where}: field(s) {sorted(actual ^ set(scalars))} differ from the declared"]
    out = []
    for k, r in scalars.items():
        if M.MODEL_SCALARS.get(k) != r:
            out.append(f"{where}.{k}: not a {r} a model may carry")
        v = m[k]
        if r == "count" and v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            out.append(f"{where}.{k}: {v!r} is not a count")
        if r == "errors" and v not in M.STANDARD_ERRORS:
            out.append(f"{where}.{k}: {str(v)[:40]!r} is not one of {list(M.STANDARD_ERRORS)}")
    cols = _declared(spec.get("columns", []))
    if isinstance(cols, str):
        return [*out, f"{where}: {cols}"]
    out += _schema_problems("model", cols, where)
    if "terms" in m or cols:
        out += _check_table(verdict, f"{where}.terms", "model", m.get("terms", []), cols,
                            population, rules=False)
    return out + _cell_rules("model", m, verdict.min_cell, where)


def _population(res: dict | None) -> int | None:
    """The largest count the run publishes (the population or the cohort): bounds how many
    rows of cells of at least min_cell any table can have."""
    if not isinstance(res, dict):
        return None
    best = 0

    def walk(o):
        nonlocal best
        if isinstance(o, dict):
            for k, v in o.items():
                if k in ("persons", "n", "at_risk") and isinstance(v, int) and \
                        not isinstance(v, bool):
                    best = max(best, v)
                else:
                    walk(v)
        elif isinstance(o, list):
            for x in o:
                walk(x)

    walk({k: v for k, v in res.items() if k not in M.META})
    return best or None


def _check_results(verdict: Verdict, entry: dict, text: str) -> tuple[list[str], dict | None]:
    where = entry["path"]
    try:
        res = json.loads(text)
    except ValueError as e:
        return [f"{where}: not JSON ({e})"], None
    if not isinstance(res, dict):
        return [f"{where}: not a results document"], None
    declared = entry.get("sections")
    meta = entry.get("meta")
    if not isinstance(declared, dict) or not isinstance(meta, list):
        return [f"{where}: its sections are not declared in outputs.json"], None
    out = _meta_problems(res, verdict.manifest, where)
    bad_meta = sorted(set(meta) - set(M.META)) + sorted(set(meta) ^ {k for k in res
                                                                        if k in M.META})
    if bad_meta:
        out.append(f"{where}: fields {sorted(set(bad_meta))} differ from the declared")
    found = _sections(res)
    for path in sorted(set(found) - set(declared)):
        out.append(f"{where}:{path}: an undeclared field: only declared tables and models leave")
    for path in sorted(set(declared) - set(found)):
        out.append(f"{where}:{path}: declared but missing")
    population = _population(res)
    for path in sorted(set(found) & set(declared)):
        spec = declared[path]
        here = f"{where}:{path}"
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind not in M.KINDS or M.kind_of_section(path) != kind:
            out.append(f"{here}: declared as {kind!r}, which this field cannot be")
            continue
        if kind == "model":
            out += _check_model(verdict, here, found[path], spec, population)
            continue
        cols = _declared(spec.get("columns"))
        if isinstance(cols, str):
            out.append(f"{here}: {cols}")
            continue
        out += _schema_problems(kind, cols, here)
        out += _check_table(verdict, here, kind, found[path], cols, population)
    # strings inside the tables (labels, steps, terms) are text a person could be named in
    tables = json.dumps({k: v for k, v in res.items() if k not in M.META})
    out += C.text_problems(tables.replace("}, {", "},\n{"), where)
    return out, res


def _vocabulary(verdict: Verdict, doc: dict) -> None:
    """What the text of the outputs may repeat: re-derived from the study kept with the run
    (and equal to what outputs.json records), or — in an exported copy, which has no private
    folder — what outputs.json records, when the export register shows these very outputs
    passed a gate with their study."""
    recorded = T.from_record((doc.get("study") or {}).get("vocabulary"))
    study_doc, why = T.kept_study(verdict.out, doc)
    if study_doc is not None:
        derived = T.vocabulary(study_doc, doc["min_cell"])
        if recorded != derived:
            verdict.no_vocab = (f"the study vocabulary in {M.NAME} is not the one of "
                                f"{T.KEPT} (edited)")
            return
        verdict.vocab = derived
        return
    if recorded is not None:
        if _exported(doc.get("manifest_sha256")):
            verdict.vocab = recorded
            return
    verdict.no_vocab = why


def _exported(manifest_sha) -> bool:
    """Does the export register record an export of these outputs? Read without its lock (an
    export holds it while the gate checks sibling runs); a damaged line counts as no record."""
    from ..secure.exports import default_path

    try:
        lines = default_path().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and r.get("event") == "export" and \
                r.get("manifest_sha256") == manifest_sha:
            return True
    return False


def _fixed_columns(kind) -> set[str]:
    """The catalogue's own column names of a kind (hpcstudy's words, not the study's)."""
    k = M.KINDS.get(kind) if isinstance(kind, str) else None
    if k is None:
        return set(M.FLAGS)
    return set(k.keys or ()) | set(k.counts) | set(k.derived) | set(M.FLAGS)


def _column_names(verdict: Verdict, kind, cols, where: str) -> list[str]:
    fixed = _fixed_columns(kind)
    return [x for c in (cols if isinstance(cols, list) else [])
            if isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"] not in fixed
            for x in _text(verdict, c["name"], f"{where}: column name")]


OWN_PATH = re.compile(r"tables/(?:publication/)?(?:attrition|model|measure)_"
                      r"([A-Za-z_][A-Za-z0-9_]*)\.(?:csv|md)")


def _manifest_text(verdict: Verdict, doc: dict) -> list[str]:
    """outputs.json's own free text: the study's and its variants' names, the files' paths,
    section and column names."""
    out = []
    study = doc.get("study") or {}
    for n in [study.get("name"), *(study.get("variants") or [])]:
        if isinstance(n, str):
            out += _text(verdict, n, f"{M.NAME}: study name")
    for e in doc.get("files", []):
        # a file hpcstudy names after an arm, model or measure: that name is the text (the
        # path 'tables/attrition_sglt2.csv' held every file of example 4: 'attrition_sglt2' is
        # no name the study declares; outside tester, session 8)
        own = OWN_PATH.fullmatch(e["path"])
        out += _text(verdict, own.group(1) if own else e["path"], f"{M.NAME}: path")
        for sec, spec in (e.get("sections") or {}).items():
            if "." in sec:
                out += _text(verdict, sec.split(".", 1)[1], f"{M.NAME}: section {sec!r}")
            if isinstance(spec, dict):
                out += _column_names(verdict, spec.get("kind"), spec.get("columns"),
                                     f"{M.NAME}: {sec}")
        out += _column_names(verdict, e.get("kind"), e.get("columns"), f"{M.NAME}: {e['path']}")
    if isinstance(doc.get("project"), str):
        out += T.problems(doc["project"], None, f"{M.NAME}: project")
    return list(dict.fromkeys(out))


def _text(verdict: Verdict, value: str, where: str, limit: int = T.MAX_VALUE) -> list[str]:
    """The free-text rules of text.py for one string (held when the study kept with the run
    cannot vouch for any text)."""
    if verdict.vocab is None:
        return [f"{where}: {verdict.no_vocab}"]
    return T.problems(value, verdict.vocab, where, limit)


def _rows_text(verdict: Verdict, kind: str, header: list[str], rows: list[dict],
               where: str) -> list[str]:
    """Free text of a table: the names of its study-named columns and its string cells
    (band keys may only be numbers or bands)."""
    if kind not in M.KINDS:
        return []
    k = M.KINDS[kind]
    fixed = _fixed_columns(kind)
    out = []
    for c in header:
        if c not in fixed:
            out += _text(verdict, c, f"{where}: column name")
    for i, r in enumerate(rows, 1):
        for c, v in r.items():
            here = f"{where}: row {i}, column {c!r}"
            if c in k.bands:
                out += T.interval_problems(v, here)
            elif kind == "model" and c == "term" and isinstance(v, str) and \
                    LEXIS_TERM.fullmatch(v):
                # a Lexis model's band term ('period 2005-2009'): the band's numbers only
                out += T.interval_problems(v.split(" ", 1)[1], here)
            elif isinstance(v, str) and not (c in M.FLAGS and v == "True"):
                out += _text(verdict, v, here)
        if len(out) > 20:
            return [*out[:20], f"{where}: … and more"]
    return out


def _results_text(verdict: Verdict, res: dict, entry: dict, where: str) -> list[str]:
    """Free text of results.json: the study name, section names, the tables' text, model
    notes, the run's messages; the status codes are hpcstudy's own, exactly."""
    from ..engines.common import STATUS

    out = []
    if isinstance(res.get("study"), str):
        out += _text(verdict, res["study"], f"{where}:study")
    run = res.get("run") if isinstance(res.get("run"), dict) else {}
    for n, w in enumerate(run.get("study_warnings") or [], 1):
        if isinstance(w, str):
            out += _text(verdict, w, f"{where}:run.study_warnings[{n}]", T.MAX_LINE)
    if isinstance(run.get("engine"), str):
        out += _text(verdict, run["engine"], f"{where}:run.engine")
    if "status_codes" in run and run["status_codes"] != {str(k): v for k, v in STATUS.items()}:
        out.append(f"{where}:run.status_codes: not hpcstudy's status codes")
    # the approval is the data authority's text: no digit rule, but nothing odd either
    for w, v in T.strings(run.get("approval") or {}, f"{where}:run.approval"):
        out += T.problems(v, None, w, T.MAX_LINE)
    declared = entry.get("sections") if isinstance(entry.get("sections"), dict) else {}
    for path, data in _sections(res).items():
        here = f"{where}:{path}"
        if "." in path:
            out += _text(verdict, path.split(".", 1)[1], f"{here} (its name)")
        kind = (declared.get(path) or {}).get("kind") if isinstance(declared.get(path),
                                                                    dict) else None
        if kind == "model" and isinstance(data, dict):
            for k in M.MODEL_NOTES:
                if isinstance(data.get(k), str):
                    out += _text(verdict, data[k], f"{here}.{k}", T.MAX_LINE)
            terms = data.get("terms") if isinstance(data.get("terms"), list) else []
            for i, t in enumerate(terms, 1):
                if isinstance(t, dict) and isinstance(t.get("withheld"), str):
                    out += _text(verdict, t["withheld"], f"{here}: row {i}, column 'withheld'",
                                 T.MAX_LINE)
            rows = [{c: v for c, v in t.items() if c != "withheld"} for t in terms
                    if isinstance(t, dict)]
            out += _rows_text(verdict, "model", M.columns_of(rows), rows, here)
        elif kind in M.KINDS and isinstance(data, list) and \
                all(isinstance(r, dict) for r in data):
            out += _rows_text(verdict, kind, M.columns_of(data), data, here)
    return out


def _check_csv(verdict: Verdict, entry: dict, text: str, res: dict | None) -> list[str]:
    where, kind = entry["path"], entry["kind"]
    cols = _declared(entry.get("columns"))
    if isinstance(cols, str):
        return [f"{where}: {cols}"]
    out = _schema_problems(kind, cols, where)
    try:
        header, rows = _parse_csv(text)
    except (ValueError, csv.Error) as e:
        return [*out, f"{where}: not a CSV table ({e})"]
    if header != [n for n, _ in cols]:
        extra = [c for c in header if c not in dict(cols)]
        return [*out, f"{where}: header {header} is not the declared "
                      f"{[n for n, _ in cols]}" + (f" (undeclared {extra})" if extra else "")]
    out += C.text_problems(text, where)
    out += _value_problems(kind, rows, cols, where, verdict.min_cell, _population(res))
    out += _cell_rules(kind, rows, verdict.min_cell,
                       where)
    if kind == "balance" and res is not None:   # an SMD of a variable Table 1 withholds
        out += C.smd_of_withheld({**res, "balance": rows}, where)
    section = entry.get("section")
    if res is not None and isinstance(section, str):
        src = _sections(res).get(section)
        if isinstance(src, dict):
            src = src.get("terms")
        if not isinstance(src, list) or not _same_rows(rows, src):
            out.append(f"{where}: differs from results.json:{section}, which it repeats")
    return out


def _check_audit_head(text: str, where: str) -> list[str]:
    """audit.json holds the run's chain head and nothing else (no place to smuggle numbers)."""
    try:
        head = json.loads(text)
    except ValueError:
        return [f"{where}: not JSON"]
    if not isinstance(head, dict):
        return [f"{where}: not a chain head"]
    out = [f"{where}: field {k!r} is not one a chain head holds" for k in head
           if k not in M.AUDIT_FIELDS]
    out += [f"{where}: field {k!r} is not a {t.__name__}" for k, t in M.AUDIT_FIELDS.items()
            if k in head and (not isinstance(head[k], t) or isinstance(head[k], bool))]
    for k in ("hash", "key_id"):
        if isinstance(head.get(k), str) and not re.fullmatch(r"[0-9a-f]{8}( [0-9a-f]{8})*",
                                                                head[k]):
            out.append(f"{where}: field {k!r} is not a grouped hex digest")
    return out + C.text_problems(text, where)


def _what_it_shows(path: Path, where: str, min_cell: int) -> list[str]:
    """For an undeclared file, already refused: what in it would have been disclosive, so the
    researcher sees why such files are not let through on their word."""
    if path.is_symlink() or not path.is_file():
        return [f"{where}: not a plain file"]
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return [f"{where}: not a text file"]
    out = C.text_problems(text, where)
    if path.suffix == ".csv":
        try:
            header, rows = _parse_csv(text)
        except (ValueError, csv.Error):
            return out
        out += C.undeclared_table(rows, min_cell, where)
        out += [f"{where}: row {i}, column {c!r}: a date" for i, r in enumerate(rows, 1)
                for c, v in r.items() if isinstance(v, str) and DATE.search(v)][:5]
    return out


def check(out: str | Path, min_cell: int | None = None, approval=None) -> Verdict:
    """Decide file by file what may leave OUT (see the module docstring)."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"{out} is not a directory", fix="give the --out of a run")
    present = _files(out)
    mpath = out / M.NAME
    doc, why = None, None
    if not mpath.is_file() or mpath.is_symlink():
        why = f"{M.NAME} is missing: nothing a run did not declare can leave"
        if any((d / M.NAME).is_file() for d in out.iterdir() if d.is_dir()):
            why += " (this folder holds runs, a job array's variants: export each one's folder)"
    else:
        manifest_bytes = mpath.read_bytes()
        try:
            doc = json.loads(manifest_bytes.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            why = f"{M.NAME} is not JSON ({e})"
        else:
            problem = _manifest_problem(doc)
            if problem:
                why, doc = f"{M.NAME}: {problem}", None
    if doc is None:
        verdict = Verdict(out, threshold(min_cell, approval), None)
        for p in present:
            verdict.hold(p, why if p == M.NAME else f"{p}: not vouched for: {why}")
        if M.NAME not in present:
            verdict.hold(M.NAME, why)
        return verdict
    verdict = Verdict(out, threshold(min_cell, approval, doc["min_cell"]), doc)
    _vocabulary(verdict, doc)
    entries = {e["path"]: e for e in doc["files"]}
    for p in present:
        if p == M.AUDIT_HEAD and p not in entries and not (out / p).is_symlink():
            data = (out / p).read_bytes()
            problems = _check_audit_head(data.decode("utf-8", "replace"), p)
            for x in problems:
                verdict.hold(p, x)
            if not problems:
                verdict.passed.append(p)
                verdict.blobs[p] = data
            continue
        if p != M.NAME and p not in entries:
            verdict.hold(p, f"{p}: not declared in {M.NAME}: files a run did not write are "
                            "never exported")
            for x in _what_it_shows(out / p, p, verdict.min_cell):
                verdict.hold(p, x)
    # results.json first: the tables repeat its sections and are compared with them
    res = None
    shows_codes = False
    # and the report last: its every number is checked against the files it was made from
    order = sorted(entries, key=lambda p: (entries[p]["kind"] != "results",
                                           entries[p]["kind"] in M.REPORT_KINDS, p))
    for p in order:
        e = entries[p]
        path = out / p
        if path.is_symlink() or not path.is_file():
            verdict.hold(p, f"{p}: declared in {M.NAME} but missing or not a plain file")
            continue
        data = path.read_bytes()
        edited = M.sha256(data) != e["sha256"]
        if edited:   # held whatever it holds; its content is still checked, to say what changed
            verdict.hold(p, f"{p}: edited after the run (its SHA-256 differs from {M.NAME})")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            verdict.hold(p, f"{p}: not UTF-8 text: cannot be checked, so not exported")
            continue
        if e["kind"] == "results":
            problems, content = _check_results(verdict, e, text)
            res = None if edited else content
            if content is not None:
                problems += _results_text(verdict, content, e, p)
        elif e["kind"] == "plan":
            problems = _cell_rules("plan", text, verdict.min_cell, p)
            if not text.startswith("plan for study "):
                problems.append(f"{p}: not a rendered plan")
            problems += [x for n, line in enumerate(text.splitlines(), 1)
                         for x in _text(verdict, line, f"{p}: line {n}", T.MAX_LINE)]
            content = text
        elif e["kind"] == "run":   # how the run ran: fixed fields, no counts
            problems, content = C.check_kind("run", text, verdict.min_cell, p), None
        elif e["kind"] in M.REPORT_KINDS:   # the report's own independent parse
            from ..report.verify import check as check_report

            problems, content = check_report(out, e, text, doc, verdict.min_cell), None
        else:
            problems = _check_csv(verdict, e, text, res)
            try:
                problems += _rows_text(verdict, e["kind"], *_parse_csv(text), p)
            except (ValueError, csv.Error):
                pass   # already refused as not a CSV table
            content = _parse_csv(text)[1] if not problems else None
        if approval is not None:   # hospital codes the project hides (the report comes last)
            from ..measures.hospitals import hidden_codes

            if e["kind"] not in M.REPORT_KINDS:
                codes = hidden_codes(e["kind"], content, T.kept_study(out, doc)[0], approval, p)
                problems += codes
                shows_codes = shows_codes or bool(codes)
            elif shows_codes:
                problems.append(f"{p}: repeats the tables that show hospital codes")
        if problems or edited:
            for x in problems:
                verdict.hold(p, x)
        else:
            verdict.passed.append(p)
            if content is not None:   # (a report repeats counts; the tables are compared)
                verdict.contents[p] = (e["kind"], content)
            verdict.blobs[p] = data
    _across_files(verdict)
    _reports_of_withheld(verdict, doc)
    text_problems = _manifest_text(verdict, doc)
    if text_problems:   # the manifest names what it lists: text that cannot leave holds them all
        for x in text_problems:
            verdict.hold(M.NAME, x)
        for p in list(verdict.passed):
            verdict.hold(p, f"{p}: {M.NAME}, which must leave with it, cannot")
        verdict.passed.clear()
        verdict.contents.clear()
        verdict.blobs.clear()
        return verdict
    verdict.passed.append(M.NAME)
    verdict.blobs[M.NAME] = manifest_bytes
    return verdict
