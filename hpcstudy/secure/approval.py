"""Project approvals: the registers, columns and calendar span a project may use.

A project file (YAML) is what the data authority approved::

    project: FSEID-00001234
    title: Statins and cardiovascular outcomes
    registers:
      bef: "*"                      # every column
      lmdb: [pnr, eksd, atc]
      lpr_adm: [pnr, recnum, d_inddto, c_pattype]
      lpr_diag: "*"
    period: [2005-01-01, 2023-12-31]
    disclosure: {min_cell: 5, identify_hospitals: rank}
    datasets: [9f2c…]               # optional: SHA-256s of the approved datasets' manifest.json

``check``, ``plan`` and ``run`` compare a compiled plan with it before any data is read and
refuse a study that reaches outside, naming each register, column or date outside.
``disclosure.identify_hospitals`` (``code``, ``rank`` or ``none``) is how far a hospital's code
may be shown: ``rank`` or ``none`` replaces it in every hospitals table whatever the study's
``identify:`` says, and refuses a study that would show the codes elsewhere (a hospital key in
``by:`` or a model term). The
calendar span applies to the dated events a study uses (hospital contacts, dispensings, causes
of death); the population registers (bef, dod, vnds) are needed whole to establish who lived
in Denmark, so only their columns are checked. With ``datasets:``, a study may run only on a
dataset whose ``manifest.json`` has one of the listed SHA-256s (a dataset changed by a later
ingest is another dataset). A site with ``require_project: true`` (see ``site.py``) refuses
``check --data``, ``plan``, ``run`` and ``submit`` without ``--project``.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..plan.nodes import Plan
from ..registers.schema import REGISTERS, day
from ..registers.sources import HOSPITAL, event_registers
from ..study.language import Problem
from ..study.yamlio import Node, load

DISCLOSURE_FIELDS = ("min_cell", "identify_hospitals")
IDENTIFY = ("code", "rank", "none")   # from the most shown to the least


@dataclass(frozen=True)
class Approval:
    project: str
    registers: dict[str, frozenset[str]]     # register -> approved columns
    period: tuple[int, int]                  # days since 1970, inclusive
    min_cell: int
    source: str
    datasets: frozenset[str] = frozenset()   # manifest SHA-256s; empty: any dataset
    identify_hospitals: str = "code"         # code | rank | none: a hospital's code shown?

    def as_dict(self) -> dict:
        d = {"project": self.project, "period": [_iso(self.period[0]), _iso(self.period[1])],
             "registers": {k: sorted(v) for k, v in sorted(self.registers.items())},
             "min_cell": self.min_cell}
        if self.identify_hospitals != "code":
            d["identify_hospitals"] = self.identify_hospitals
        if self.datasets:
            d["datasets"] = sorted(self.datasets)
        return d


def _iso(d: int) -> str:
    return str(np.datetime64(int(d), "D"))


def load_approval(path: str | Path) -> Approval:
    """Read a project file; every problem at once, each with file:line."""
    doc = load(path, "project")
    f = str(path)
    problems: list[Problem] = []

    def err(node, key, field, message, fix=""):
        line = node.line_of(key) if isinstance(node, Node) else 0
        problems.append(Problem(f"{f}:{line}", field, message, fix))

    for k in doc:
        if k not in ("project", "title", "registers", "period", "disclosure", "datasets"):
            err(doc, k, str(k), "unknown field", "allowed: project, title, registers, period, "
                "disclosure, datasets")
    project = doc.get("project")
    if not isinstance(project, str) or not project.strip():
        err(doc, "project", "project", "missing", "give the approval's id, e.g. FSEID-00001234")
    registers: dict[str, frozenset[str]] = {}
    regs = doc.get("registers")
    if not isinstance(regs, Node) or not regs:
        err(doc, "registers", "registers", "missing or empty",
            "list the approved registers and their columns")
    else:
        for name, cols in regs.items():
            if name not in REGISTERS:
                err(regs, name, f"registers.{name}", "unknown register",
                    f"registers are {', '.join(REGISTERS)}")
                continue
            known = set(REGISTERS[name].column_names)
            if cols == "*":
                registers[name] = frozenset(known)
            elif isinstance(cols, list):
                bad = [c for c in cols if c not in known]
                if bad:
                    err(regs, name, f"registers.{name}", f"unknown column(s) {bad}",
                        f"{name} has {', '.join(sorted(known))}")
                registers[name] = frozenset(c for c in cols if c in known)
            else:
                err(regs, name, f"registers.{name}", "must be \"*\" or a list of columns")
    period = (0, 0)
    p = doc.get("period")
    ok = isinstance(p, list) and len(p) == 2 and all(
        isinstance(x, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", x) for x in p)
    if not ok:
        err(doc, "period", "period", "must be [first day, last day]",
            "e.g. period: [2005-01-01, 2023-12-31]")
    else:
        try:
            period = (day(p[0]), day(p[1]))
        except ValueError:
            err(doc, "period", "period", f"{p} holds an impossible date")
        if period[0] > period[1]:
            err(doc, "period", "period", f"reversed: {p[0]} is after {p[1]}")
    min_cell = 5
    disc = doc.get("disclosure")
    if disc is not None and not isinstance(disc, Node):
        err(doc, "disclosure", "disclosure", "must be a mapping", "e.g. disclosure: {min_cell: 5}")
    identify = "code"
    if isinstance(disc, Node):
        for k in disc:
            if k not in DISCLOSURE_FIELDS:
                near = difflib.get_close_matches(str(k), DISCLOSURE_FIELDS, n=1)
                err(disc, k, f"disclosure.{k}", "unknown field",
                    f"did you mean {near[0]!r}?" if near else
                    f"allowed: {', '.join(DISCLOSURE_FIELDS)}")
        identify = disc.get("identify_hospitals", "code")
        if identify not in IDENTIFY:
            err(disc, "identify_hospitals", "disclosure.identify_hospitals",
                f"{identify!r} is not code, rank or none", "rank shows each hospital's rank "
                "by O/E instead of its code; none numbers them by size")
            identify = "none"
        min_cell = disc.get("min_cell", 5)
        if not isinstance(min_cell, int) or isinstance(min_cell, bool) \
                or not 1 <= min_cell <= 1_000_000:
            err(disc, "min_cell", "disclosure.min_cell", "must be a whole number from 1 to "
                "1000000")
            min_cell = 5
    datasets: set[str] = set()
    ds = doc.get("datasets")
    if ds is not None:
        if not isinstance(ds, list) or not ds:
            err(doc, "datasets", "datasets", "must be a list of manifest SHA-256s",
                "e.g. datasets: [<sha256sum DATA/manifest.json>], or leave the field out")
        else:
            for i, h in enumerate(ds):
                if not isinstance(h, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", h):
                    line = ds.lines[i] if getattr(ds, "lines", None) else 0
                    problems.append(Problem(f"{f}:{line}", f"datasets[{i}]",
                                            f"{h!r} is not a SHA-256 (64 hex digits)",
                                            "sha256sum DATA/manifest.json gives it"))
                else:
                    datasets.add(h.lower())
    if problems:
        from ..study import StudyErrors

        raise StudyErrors(problems)
    return Approval(project.strip(), registers, period, min_cell, f, frozenset(datasets),
                    identify)


def manifest_sha256(data: str | Path) -> str | None:
    p = Path(data) / "manifest.json"
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        return None


def check_dataset(approval: Approval, data: str | Path) -> None:
    """Refuse a dataset the approval does not name (when it names any); only the manifest
    is read."""
    if not approval.datasets:
        return
    sha = manifest_sha256(data)
    if sha is None:
        return   # no manifest: opening the dataset says so, with its own fix
    if sha not in approval.datasets:
        from ..study import StudyErrors

        raise StudyErrors([Problem(str(data), "datasets",
                                   f"dataset {data} (manifest SHA-256 {sha}) is not one project "
                                   f"{approval.project} is approved for",
                                   f"use an approved dataset, or ask for this one in "
                                   f"{approval.source}'s datasets:")])


def require_project() -> None:
    """Refuse to go on without a project approval where the site requires one."""
    from .site import load_site

    site = load_site()
    if site.require_project:
        from ..errors import UserError

        raise UserError("this site requires a project approval for studies that read data",
                        where=site.source, fix="give --project FILE (or set $HPCSTUDY_PROJECT)")


def reach(plan: Plan) -> tuple[float, float]:
    """The first and last calendar day of register events the plan may look at (an open
    window reaches the start or the end of the registers)."""
    idx_lo, idx_hi, lo, hi = math.inf, -math.inf, math.inf, -math.inf
    for g in plan.groups:
        ix = g.index
        start = -math.inf if ix.start is None else ix.start
        end = plan.data_end if ix.end is None else ix.end
        idx_lo, idx_hi = min(idx_lo, start), max(idx_hi, end)
        if ix.kind == "first_event":
            lo = min(lo, start - ix.washout_days)
            hi = max(hi, end)
        if g.never_before is not None:
            lo = -math.inf  # "no exposure ever before index"
        if g.censor_at is not None:
            hi = max(hi, plan.data_end)

    def relative(window):
        nonlocal lo, hi
        lo = min(lo, idx_lo + (window.lo if window.lo is not None else -math.inf))
        hi = max(hi, idx_hi + (window.hi if window.hi is not None else math.inf))

    for c in plan.criteria:
        relative(c.window)
    for c in plan.columns:
        if c.window is not None and (c.stream is not None or c.charlson):
            relative(c.window)
    o = plan.outcome
    if o.stream is not None:
        follow = plan.follow_up_days if plan.follow_up_days else math.inf
        end = idx_hi + (o.window.hi if o.window.hi is not None else follow)
        lo = min(lo, idx_lo + (o.window.lo or 0))
        hi = max(hi, min(end, plan.data_end))
    # an open window reaches back to the start of the registers, not further
    return max(lo, plan.period.start), min(hi, plan.data_end)


def check(plan: Plan, approval: Approval) -> list[Problem]:
    """What the plan would use that the project is not approved for, one problem each."""
    where = f"{plan.source}"
    out: list[Problem] = []
    for reg, cols in plan.reads.items():
        if reg not in approval.registers:
            out.append(Problem(where, f"registers.{reg}",
                               f"reads register {reg}, which project {approval.project} is not "
                               "approved for",
                               f"ask for {reg} in the approval ({approval.source})"))
            continue
        extra = sorted(set(cols) - approval.registers[reg])
        if extra:
            out.append(Problem(where, f"registers.{reg}",
                               f"reads column(s) {extra} of {reg}, outside project "
                               f"{approval.project}'s approval",
                               f"ask for them in {approval.source} or leave them out"))
    out += _hospital_codes(plan, approval)
    lo, hi = reach(plan)
    uses_events = any(r in plan.reads for r in event_registers())
    if uses_events and (lo < approval.period[0] or hi > approval.period[1]):
        first, last = _iso(lo), _iso(hi)
        out.append(Problem(where, "period",
                           f"looks at events from {first} to {last}, outside project "
                           f"{approval.project}'s period {_iso(approval.period[0])} to "
                           f"{_iso(approval.period[1])}",
                           "close open windows (e.g. [-3650, 0] instead of [null, 0]) or move "
                           "the index window"))
    return out


def identify_hospitals(study_identify: str, approval: Approval | None) -> str:
    """How a hospitals table names its units: the study's ``identify:``, or the project's
    ``identify_hospitals`` where that shows less (a study can hide more, never show more)."""
    if approval is None:
        return study_identify
    return max(study_identify, approval.identify_hospitals, key=IDENTIFY.index)


def _hospital_codes(plan: Plan, approval: Approval) -> list[Problem]:
    """Where a study would show hospital codes that the project hides: a hospital covariate
    (the index contact's hospital column) as a key of rates or measures, or as a model term."""
    if approval.identify_hospitals == "code":
        return []
    hosp = {c.name for c in plan.columns if c.kind == "index_contact" and
            c.attribute == HOSPITAL}
    from ..plan.nodes import ModelPlan

    uses = [("analyses.rates.by", plan.rates_by or ())]
    uses += [(f"analyses.measures.{m.name}.by", m.by) for m in plan.measures]
    for key in ("cox", "logistic", "poisson"):
        spec = plan.analysis(ModelPlan, model=key)
        if spec is not None:
            uses += [(f"analyses.{key}.adjust", spec.adjust),
                     (f"analyses.{key}.strata", spec.strata)]
    if plan.hospitals is not None:
        uses.append(("analyses.hospitals.adjust", plan.hospitals.adjust))
    return [Problem(f"{plan.source}", field,
                    f"{name!r} would show hospital codes, which project {approval.project} "
                    f"hides (identify_hospitals: {approval.identify_hospitals})",
                    "compare hospitals with analyses.hospitals (its table shows ranks), or "
                    f"drop {name} from {field}")
            for field, names in uses for name in names if name in hosp]


def approved_study(study, approval: Approval | None):
    """The study with the project's disclosure settings applied where they show less than the
    study asks for (its hospitals table's ``identify``); the same object when nothing moves."""
    from dataclasses import replace

    h = study.analyses.hospitals
    if h is None or identify_hospitals(h.identify, approval) == h.identify:
        return study
    hospitals = replace(h, identify=identify_hospitals(h.identify, approval))
    return replace(study, analyses=replace(study.analyses, hospitals=hospitals))
