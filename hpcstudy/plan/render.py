"""A plan, printed for people: what each group's index is, what is checked, what is read."""

from __future__ import annotations

import numpy as np

from .nodes import (
    AgeRange,
    CurvesPlan,
    EventStream,
    IndexPlan,
    ModelPlan,
    Plan,
    RegionIn,
    ResidentFor,
    SexIs,
)


def _d(days) -> str:
    return "open" if days is None else str(np.datetime64(int(days), "D"))


def _stream(s: EventStream | None) -> str:
    if s is None:
        return "-"
    what = ", ".join(s.codes.prefixes) + "*" if s.codes else "any code"
    extra = []
    if s.register == "lpr":
        if tuple(s.diagnosis_types) != (0, 1):
            extra.append("diagnosis " + "/".join("AB"[t] for t in s.diagnosis_types))
        if s.patient_types:
            extra.append("patient type " + "/".join(map(str, s.patient_types)))
    for col, vals in s.filters:
        extra.append(f"{col} in {list(vals)}")
    tail = f" ({'; '.join(extra)})" if extra else ""
    return f"{s.register}[{what}]{tail}"


def _index(ix: IndexPlan) -> str:
    if ix.kind == "date":
        return f"fixed date {_d(ix.start)}"
    if ix.kind == "random_date":
        return f"a random date in [{_d(ix.start)}, {_d(ix.end)}] (from seed and pnr)"
    nth = {1: "first"}.get(ix.nth, f"event no. {ix.nth}")
    s = f"{nth} {_stream(ix.stream)} in [{_d(ix.start)}, {_d(ix.end)}]"
    if ix.washout_days:
        s += f", none in the {ix.washout_days} days before"
    return s


def _w(w) -> str:
    return f"[{'…' if w.lo is None else w.lo}, {'…' if w.hi is None else w.hi}]"


BOTH_ARMS = {"remove": "removed from both", "first": "kept in the arm entered first",
             "keep": "kept in both (errors clustered by person)"}


def _design(plan: Plan) -> list[str]:
    """The steps over both arms' table: persons in both arms, the propensity-score design.
    In words only: plan.txt may hold no number the study did not write (outputs/text.py)."""
    out = []
    if plan.both_arms is not None:
        rule = plan.both_arms.rule
        out.append(f"  persons in both arms: {BOTH_ARMS.get(rule, rule)}")
    ps = plan.propensity
    if ps is not None:
        use = {"matching": "nearest-neighbour matching on its logit"
                           + (", with replacement" if ps.matching.replace else ""),
               "weighting": f"weighting, estimand {ps.weighting.estimand}"
                            + (", stabilised" if ps.weighting.stabilised else ""),
               "stratification": "quantile strata as weights",
               "none": "diagnostics only (balance, preference score)"}[ps.method]
        out.append(f"  propensity score (logistic) of {', '.join(ps.covariates)}")
        out.append(f"      {'trimmed to the common support, then ' if ps.trim else ''}{use}")
    return ["", "comparative design (dimension: person, both arms):", *out] if out else []


def render(plan: Plan) -> str:
    out = [f"plan for study {plan.name!r} ({plan.source})", "", "groups (dimension: person):"]
    if plan.description:   # the report's subtitle: plan.txt is the exported place for it
        out[1:1] = [f"description: {' '.join(plan.description.split())}"]
    for g in plan.groups:
        out.append(f"  group={g.code} {g.label}: index = {_index(g.index)}")
        if g.never_before is not None:
            out.append(f"      with no {_stream(g.never_before)} on or before index")
        if g.censor_at is not None:
            out.append(f"      censored at their first {_stream(g.censor_at)}")
    out += ["", "eligibility at index (dimension: person):",
            "  alive and resident in Denmark"]
    for step in plan.population:
        if isinstance(step, AgeRange):
            out.append(f"  age in [{step.lo}, {step.hi}) years")
        elif isinstance(step, SexIs):
            out.append(f"  sex {step.sex}")
        elif isinstance(step, RegionIn):
            out.append(f"  region in {list(step.regions)}")
        elif isinstance(step, ResidentFor):
            out.append(f"  resident for at least {step.years} years before index")
    for c in plan.criteria:
        out.append(f"  {c.action}: {'≥' + str(c.min_count) + ' ' if c.min_count > 1 else ''}"
                   f"{_stream(c.stream)} in days {_w(c.window)} of index")
    out += ["", "covariates at index (dimension: person):"]
    for c in plan.columns:
        desc = {"age": "age in years", "sex": "female (0/1)", "region": "region code",
                "calendar_year": "calendar year of index",
                "charlson": "Charlson index (Danish ICD-10), 19 categories"}.get(c.kind, "")
        if c.kind in ("flag", "count"):
            desc = f"{'any' if c.kind == 'flag' else 'number of'} {_stream(c.stream)}"
        elif c.kind == "index_contact":
            desc = (f"any diagnosis of the index contact in {_stream(c.stream)} (0/1)"
                    if c.attribute == "diagnoses" else f"the index contact's {c.attribute}")
        w = f" in days {_w(c.window)}" if c.window else ""
        out.append(f"  {c.name}: {desc}{w}")
    out += _design(plan)
    o = plan.outcome
    what = "death" + (f" with cause {_stream(o.stream)}" if o.stream else "") if o.death \
        else f"first {_stream(o.stream)}"
    out += ["", f"outcome {o.name!r}: {what} in days {_w(o.window)} after index"]
    ends = ["outcome", "death" + (" (competing)" if not o.death else ""), "emigration",
            f"end of data {_d(plan.data_end)}"]
    if plan.follow_up_days:
        ends.append(f"{plan.follow_up_days} days")
    if plan.follow_up_end is not None:
        ends.append(f"calendar end {_d(plan.follow_up_end)}")
    if plan.follow_up_start:
        out.append(f"follow-up starts on day {plan.follow_up_start} after index (a lag: "
                   "earlier outcomes remove the person, earlier time is not counted)")
    from ..designs.episodes import plan_text

    ends += plan_text(plan)   # as-treated follow-up
    out.append("follow-up ends at the first of: " + ", ".join(ends))
    out += ["", "analyses:"]
    if plan.rates_by is not None:
        out.append(f"  rates by {', '.join(plan.rates_by)}")
    if plan.analysis(CurvesPlan) is not None:
        out.append("  Kaplan–Meier and cumulative incidence by group")
    for key in ("cox", "logistic", "poisson"):
        m = plan.analysis(ModelPlan, model=key)
        if m is not None:
            out.append(f"  {key}: group + {', '.join(m.adjust) or 'nothing'}"
                       + (f", strata {', '.join(m.strata)}" if m.strata else ""))
    if plan.lexis:
        out.append(f"  Lexis rates by age band {list(plan.lexis.age_bands)} and period "
                   f"{list(plan.lexis.periods)}")
    for m in plan.measures:
        out.append(f"  measure {m.name} by {', '.join(m.by)}")
    out += ["", f"disclosure: cells below {plan.min_cell} persons are suppressed", "",
            "registers and columns read:"]
    for reg, cols in plan.reads.items():
        out.append(f"  {reg}: {', '.join(cols)}")
    return "\n".join(out)
