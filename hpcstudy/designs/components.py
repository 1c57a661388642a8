"""Covariates a comparative design adds to its score on request (``propensity:``):

* ``charlson_components: true``: each of the 19 Charlson categories as a 0/1 flag, any of its
  codes (action or secondary diagnosis) in days [-3650, 0] — the raw categories, without the
  index's rule that a severe form replaces the mild one; named ``charlson_CATEGORY``;
* ``codelist_flags: true``: each codelist of the study besides the arms' own index codelists
  as a 0/1 flag, any event up to and including the index day; named ``codelist_NAME``.

A flag the study already has (the same events and window) is not added twice. At the design
step each engine leaves out an added flag that fewer than ``min_cell`` persons of an arm have
(or lack): it cannot be balanced, its Table 1 row would be withheld, and a flag held by few
persons of one arm makes the score's coefficients diverge. ``design.left_out`` names them.
"""

from __future__ import annotations

from dataclasses import replace

from ..study import charlson
from ..study.language import SYSTEM_REGISTER, Events, Window

CHARLSON_WINDOW = Window(-3650, 0)
FLAG_WINDOW = Window(None, 0)


def expand(compiler, study, cols: list):
    """(columns with the added flags, the study whose propensity covariates include them);
    called by plan/compile.py."""
    from ..plan.nodes import EventStream, FlagColumn

    pr = study.propensity
    if pr is None or not (pr.charlson_components or pr.codelist_flags):
        return cols, study
    new = []
    if pr.charlson_components:
        compiler.stream(Events(None, "lpr"), "propensity.charlson_components")   # its reads
        for name, _, prefixes in charlson.CATEGORIES:
            s = EventStream("lpr", compiler.codeset("icd10", prefixes), (0, 1), ())
            new.append((f"charlson_{name}", s, CHARLSON_WINDOW, "charlson_components"))
    if pr.codelist_flags:
        rules = [study.index] + ([study.comparator.index] if study.comparator is not None and
                                 study.comparator.index is not None else [])
        arms = {r.events.codelist for r in rules if r.events is not None}
        for cl in study.codelists:
            if cl.name not in arms:
                s = compiler.stream(Events(cl.name, SYSTEM_REGISTER[cl.system]),
                                    "propensity.codelist_flags")
                new.append((f"codelist_{cl.name}", s, FLAG_WINDOW, "codelist_flags"))
    have = {(c.stream, c.window) for c in cols if c.kind == "flag"}
    taken = {c.name for c in cols}
    out, added = list(cols), []
    for name, s, window, key in new:
        if (s, window) in have:
            continue
        if name in taken:
            compiler.problem("propensity", key, f"adds the covariate {name}, a name the study "
                             "gives another covariate", f"rename that covariate, or drop {key}")
            continue
        out.append(FlagColumn(name, s, window))
        have.add((s, window))
        added.append(name)
    pr = replace(pr, covariates=pr.covariates + tuple(added), added=tuple(added))
    return out, replace(study, propensity=pr)


def keep_common(plan, counts: dict):
    """(the plan without the added flags too rare to use, their names). ``counts`` maps each
    added flag to [[lacking, having] of the comparator arm, [lacking, having] of the exposed]."""
    pr = plan.propensity
    k = plan.min_cell
    out = tuple(name for name in pr.added if min(min(arm) for arm in counts[name]) < k)
    if not out:
        return plan, []
    pr = replace(pr, covariates=tuple(c for c in pr.covariates if c not in out))
    return replace(plan, design=replace(plan.design, propensity=pr)), list(out)
